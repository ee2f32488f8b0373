"""BN health monitor: detects corrupted running (EMA) statistics, the failure in the PyTorch forum thread.

Symptoms it measures, per BN-like layer (any module with running_mean/running_var buffers):
- running_var min/max and channels below 1e-30 or denormal in float32 (forum: min running_var 4.8e-34 at
  "epoch" 300, 5.6e-45 at 700);
- dead channels in recent batches: the layer's input is constant (zero variance, e.g. all zero after a ReLU),
  which drives that channel's running_var toward 0;
- discrepancy between running and current batch statistics: mean over channels of |mu_ema - mu_B| / sigma_B
  and of |log(var_ema / var_B)| (Wu, "Devils in BatchNorm": BN fails when the EMA does not approximate
  mu_B, sigma_B);
and at model level the gap between eval-mode (running stats) and train-mode (batch stats) validation loss.
An "EMA corruption" event needs both: the loss gap and a statistics discrepancy above their thresholds;
it names the worst layers and channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bnlab.norm.modes import mode, preserved_buffers

FLOAT32_TINY = torch.finfo(torch.float32).tiny  # smallest normal float32; below it values are denormal


def bn_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    out = []
    for name, m in model.named_modules():
        rm, rv = getattr(m, "running_mean", None), getattr(m, "running_var", None)
        if isinstance(rm, torch.Tensor) and isinstance(rv, torch.Tensor) and rv.ndim == 1:
            out.append((name, m))
    return out


@dataclass
class HealthConfig:
    enabled: bool = True
    batches: int = 2  # training batches per check (cheap: a couple of forward passes)
    every_n_steps: int = 0  # also log running_var extremes every N training steps (0 = only at evaluation)
    tiny_var: float = 1e-30
    gap_threshold: float = 0.25  # eval-mode minus train-mode validation loss, nats
    discrepancy_threshold: float = 1.0  # worst layer's mean |mu_ema - mu_B| / sigma_B
    log_var_threshold: float = 1.5  # worst layer's mean |log(var_ema / var_B)|
    channel_z_threshold: float = 5.0  # ... or any single channel's |mu_ema - mu_B| / sigma_B
    channel_log_var_threshold: float = 4.0  # ... or any single channel's |log(var_ema / var_B)| (a 55x variance error)
    top_k: int = 5  # channels named per flagged layer


class BNHealthMonitor:
    def __init__(self, cfg: HealthConfig):
        self.cfg = cfg
        self.events: list[dict] = []

    # --- measurements -------------------------------------------------------------------------------------
    @torch.no_grad()
    def layer_stats(self, model: nn.Module, batches) -> dict[str, dict]:
        """Per-layer statistics from a train-mode pass (what training sees); buffers are left untouched."""
        layers = bn_layers(model)
        acc = {name: {"n": 0, "s": 0, "s2": 0} for name, _ in layers}

        def hook(name):
            def fn(module, inputs):
                x = inputs[0].detach().float().transpose(0, 1).flatten(1)  # (C, N*H*W)
                a = acc[name]
                a["n"] += x.shape[1]
                a["s"] = a["s"] + x.sum(1)
                a["s2"] = a["s2"] + (x * x).sum(1)

            return fn

        handles = [m.register_forward_pre_hook(hook(name)) for name, m in layers]
        try:
            with mode(model, train=True), preserved_buffers(model):
                for i, batch in enumerate(batches):
                    if i >= self.cfg.batches:
                        break
                    model(batch[0] if isinstance(batch, list | tuple) else batch)
        finally:
            for h in handles:
                h.remove()

        stats = {}
        for name, m in layers:
            a = acc[name]
            rm, rv = m.running_mean.float(), m.running_var.float()
            eps = float(getattr(m, "eps", 1e-5))
            s = {
                "running_var_min": rv.min().item(),
                "running_var_max": rv.max().item(),
                "n_tiny_var": int((rv < self.cfg.tiny_var).sum()),
                "n_denormal_var": int(((rv > 0) & (rv < FLOAT32_TINY)).sum()),
                "channels": rv.numel(),
            }
            if a["n"]:
                mu = a["s"] / a["n"]
                var = (a["s2"] / a["n"] - mu * mu).clamp_min(0)
                z = (rm - mu).abs() / (var + eps).sqrt()
                log_ratio = ((rv + eps) / (var + eps)).log().abs()
                s.update(
                    dead_fraction=(var <= 1e-10 * (1 + mu * mu)).float().mean().item(),
                    mean_z=z.mean().item(),
                    max_z=z.max().item(),
                    mean_abs_log_var_ratio=log_ratio.mean().item(),
                    max_abs_log_var_ratio=log_ratio.max().item(),
                    worst_channels=torch.topk(z + log_ratio, min(self.cfg.top_k, z.numel())).indices.tolist(),
                )
            stats[name] = s
        return stats

    @staticmethod
    def running_var_extremes(model: nn.Module) -> dict:
        rvs = [m.running_var.detach().float() for _, m in bn_layers(model)]
        if not rvs:
            return {}
        allv = torch.cat(rvs)
        return {"health/running_var_min": allv.min().item(), "health/running_var_max": allv.max().item()}

    # --- verdict ------------------------------------------------------------------------------------------
    def check(self, model: nn.Module, batches, metrics: dict, epoch: int | None = None) -> dict:
        """Measure, judge, remember any event; return flat `health/*` metrics for the epoch's row."""
        stats = self.layer_stats(model, batches)
        if not stats:
            return {}
        gap = None
        if "val_loss_running" in metrics and "val_loss_batch" in metrics:
            gap = metrics["val_loss_running"] - metrics["val_loss_batch"]
        last = list(stats)[-1]
        worst = max(stats, key=lambda n: stats[n].get("mean_z", 0) + stats[n].get("mean_abs_log_var_ratio", 0))
        row = {
            "health/eval_train_loss_gap": gap,
            "health/running_var_min": min(s["running_var_min"] for s in stats.values()),
            "health/last_bn_running_var_min": stats[last]["running_var_min"],
            "health/n_tiny_var": sum(s["n_tiny_var"] for s in stats.values()),
            "health/n_denormal_var": sum(s["n_denormal_var"] for s in stats.values()),
            "health/dead_fraction": sum(s.get("dead_fraction", 0) * s["channels"] for s in stats.values())
            / sum(s["channels"] for s in stats.values()),
            "health/max_mean_z": stats[worst].get("mean_z", 0.0),
            "health/max_mean_abs_log_var_ratio": max(s.get("mean_abs_log_var_ratio", 0) for s in stats.values()),
            "health/max_channel_z": max(s.get("max_z", 0) for s in stats.values()),
            "health/max_channel_abs_log_var_ratio": max(s.get("max_abs_log_var_ratio", 0) for s in stats.values()),
        }
        c = self.cfg
        discrepant = [
            n
            for n, s in stats.items()
            if s.get("mean_z", 0) > c.discrepancy_threshold
            or s.get("mean_abs_log_var_ratio", 0) > c.log_var_threshold
            or s.get("max_z", 0) > c.channel_z_threshold
            or s.get("max_abs_log_var_ratio", 0) > c.channel_log_var_threshold
        ]
        flagged = gap is not None and gap > self.cfg.gap_threshold and bool(discrepant)
        row["health/ema_corruption"] = int(flagged)
        if flagged:
            discrepant.sort(key=lambda n: -(stats[n].get("mean_z", 0) + stats[n].get("mean_abs_log_var_ratio", 0)))
            self.events.append(
                {
                    "event": "ema_corruption",
                    "epoch": epoch,
                    "eval_train_loss_gap": gap,
                    "layers": [
                        {
                            "layer": n,
                            "channels": stats[n].get("worst_channels", []),
                            "mean_z": stats[n].get("mean_z"),
                            "mean_abs_log_var_ratio": stats[n].get("mean_abs_log_var_ratio"),
                            "running_var_min": stats[n]["running_var_min"],
                        }
                        for n in discrepant[:3]
                    ],
                }
            )
        return row

    def describe(self) -> str:
        if not self.events:
            return "BN health: no EMA-corruption event"
        e = self.events[-1]
        layers = ", ".join(f"{x['layer']} (channels {x['channels']})" for x in e["layers"])
        return (
            f"BN health: {len(self.events)} EMA-corruption event(s); last at epoch {e['epoch']}: eval-mode "
            f"val loss exceeds train-mode by {e['eval_train_loss_gap']:.3g}; running statistics disagree with "
            f"batch statistics in {layers}. Remedies: Precise BN (eval.modes+=precise), lower LR, larger eps, "
            f"or a batch-independent norm."
        )


def build_monitor(cfg) -> BNHealthMonitor | None:
    hcfg = cfg.get("health") if cfg is not None else None
    if not hcfg or not hcfg.get("enabled", True):
        return None
    known = HealthConfig.__dataclass_fields__
    return BNHealthMonitor(HealthConfig(**{k: v for k, v in hcfg.items() if k in known}))
