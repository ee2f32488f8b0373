"""BN health monitor: finds why eval-mode (running statistics) and train-mode (batch statistics) disagree.

Per BN-like layer (`bn_layers`: any module with running statistics, norm.layer.has_running_stats) it measures,
on training batches in train mode (what the EMA tracks) and on validation batches in eval mode (what inference
sees):
- running_var min/max, channels below `tiny_var` and denormal in float32 (forum: min running_var 4.8e-34 at
  "epoch" 300, 5.6e-45 at 700);
- dead channels: the layer's input is constant on the training batches (e.g. zero after a ReLU), which drives
  that channel's running_var to 0, and in PyTorch's float32 EMA to 4 x 2^-149 = 5.6e-45, where
  0.9 x 4 x 2^-149 rounds back to itself;
- on validation batches, each channel's largest deviation from its running mean in running sigmas,
  max |x - mu_ema| / sqrt(var_ema + eps): ~1 to ~5 for a healthy channel, ~|x| / sqrt(eps) for a collapsed one;
- the running statistics against the training batches' own: per batch, |mu_ema - mu_B| / sigma_B and
  |log(var_ema / var_B)| (Wu, "Devils in BatchNorm": BN fails when the EMA does not approximate mu_B, sigma_B),
  and against the batches' average, with the spread of the batch means between batches set apart.

Events, each naming layers and channels, by cause:
- "collapsed_variance": a channel constant on training data (dead there, or running_var below `tiny_var`) that
  is alive on validation data, which eval mode multiplies by up to 1/sqrt(eps). Needs no loss gap: it is a
  latent fault that any validation or test input reaching the channel triggers.
- "stale_ema": eval-mode loss above train-mode loss by more than `gap_threshold` and running statistics away
  from the average training-batch statistics (the EMA lags, or never converged).
- "batch_composition": the same loss gap with the EMA on the batches' average, but batch means that differ
  between batches far more than i.i.d. batches' would (non-i.i.d. batches, claim C3): the model has learned to
  rely on its batches' statistics, and no EMA fix can help.
The thresholds' defaults live in conf/train.yaml (`health:`), which bnlab's runs read, and are mirrored as the
defaults of `HealthConfig` for use without Hydra (`bnlab.diagnostics.diagnose`); tests/test_health_library.py keeps
the two equal.

This module is the one implementation: bnlab's training loop (`BNHealthMonitor.check`), `bnlab health` and the
library entry points (`diagnose`, the training-loop hook, the Lightning callback, in diagnose.py) all measure with
`measure` and judge with `judge`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from bnlab import CONF_DIR
from bnlab.config_errors import ConfigError
from bnlab.health_events import EVENTS
from bnlab.norm.layer import has_running_stats
from bnlab.norm.modes import mode, preserved_buffers

FLOAT32_TINY = torch.finfo(torch.float32).tiny  # smallest normal float32; below it values are denormal
REMEDIES = {
    "collapsed_variance": "a larger eps (bounds the gain at 1/sqrt(eps)), a lower LR, or a batch-independent "
    "norm; Precise BN cannot help (the channel is constant on training data)",
    "stale_ema": "Precise BN (eval.modes+=precise), more steps or a larger momentum",
    "batch_composition": "i.i.d. batches, Batch Renorm, or batch statistics at evaluation; not an EMA fix",
}


def bn_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every layer that normalizes by running statistics at evaluation (norm.layer's
    `has_running_stats`: the BN layers, and Frozen BN, whose constant statistics can be collapsed too)."""
    return [(name, m) for name, m in model.named_modules() if has_running_stats(m)]


@dataclass
class HealthConfig:
    """The `health:` block of conf/train.yaml (meanings there), with the same defaults so that it is usable without
    Hydra: `HealthConfig()` or `HealthConfig(gap_threshold=0.5)`. `HealthConfig.from_cfg` is bnlab's: the YAML's
    defaults overlaid with a run's `health` block."""

    enabled: bool = True
    batches: int = 2
    val_batches: int = 4
    every_n_steps: int = 0
    tiny_var: float = 1e-30
    collapse_z_threshold: float = 10.0
    gap_threshold: float = 0.25
    discrepancy_threshold: float = 1.0
    log_var_threshold: float = 1.5
    channel_z_threshold: float = 5.0
    channel_log_var_threshold: float = 4.0
    composition_threshold: float = 3.0
    top_k: int = 5

    @classmethod
    def from_cfg(cls, health=None, **overrides) -> HealthConfig:
        """conf/train.yaml's `health:` defaults, overlaid with a run's `health` block and keyword overrides (the
        dataclass's own defaults, which equal the YAML's, where bnlab is installed without its conf/)."""

        path = Path(CONF_DIR) / "train.yaml"
        base = OmegaConf.load(path).health if path.exists() else OmegaConf.create(asdict(cls()))
        merged = OmegaConf.merge(base, health or {}, overrides)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise ConfigError(f"health.{unknown[0]}", "not an option of the BN health monitor", allowed=sorted(known))
        return cls(**{k: merged[k] for k in known})


def _per_channel(x: torch.Tensor) -> torch.Tensor:
    """(N, C, ...) -> (C, N * ...)."""
    return x.detach().float().transpose(0, 1).flatten(1)


def _model_input(batch):
    """A batch's input: the tensor itself, or the first element of an (x, y, ...) tuple or list."""
    return batch[0] if isinstance(batch, list | tuple) else batch


@torch.no_grad()
def _collect(model: nn.Module, batches, n_batches: int, train: bool, fn, device=None) -> None:
    """Forward the first `n_batches` batches in train or eval mode, calling fn(name, module, input) before each
    BN-like layer; mode and every buffer are restored afterwards. `device`: move inputs there first."""
    layers = bn_layers(model)
    handles = [m.register_forward_pre_hook(lambda mod, inp, name=name: fn(name, mod, inp[0])) for name, m in layers]
    try:
        with mode(model, train=train), preserved_buffers(model):
            for i, batch in enumerate(batches):
                if i >= n_batches:
                    break
                x = _model_input(batch)
                model(x if device is None else x.to(device))
    finally:
        for h in handles:
            h.remove()


def _top(score: torch.Tensor, k: int) -> list[int]:
    return torch.topk(score, min(k, score.numel())).indices.tolist()


def _running_figures(rm: torch.Tensor, rv: torch.Tensor, c: HealthConfig) -> tuple[dict, dict]:
    """The running statistics on their own: smallest/largest variance, tiny and denormal channels."""
    tiny, denormal = rv < c.tiny_var, (rv > 0) & (rv < FLOAT32_TINY)
    s = {
        "running_var_min": rv.min().item(),
        "running_var_max": rv.max().item(),
        "n_tiny_var": int(tiny.sum()),
        "n_denormal_var": int(denormal.sum()),
        "channels": rv.numel(),
    }
    return s, {"running_mean": rm, "running_var": rv, "tiny_var": tiny, "denormal_var": denormal}


def _batch_figures(batches: list, rm, rv, eps: float, c: HealthConfig) -> tuple[dict, dict]:
    """Running statistics against the training batches' (mu_B, var_B, per-image means), per batch and on average."""
    mu = torch.stack([b[0] for b in batches])  # (B, C)
    var = torch.stack([b[1] for b in batches])
    img = torch.cat([b[2] for b in batches])  # (B * N, C) per-image channel means
    sigma = (var + eps).sqrt()
    z = ((rm - mu).abs() / sigma).mean(0)  # running vs each batch
    log_ratio = ((rv + eps) / (var + eps)).log().abs().mean(0)
    mu_bar, var_bar = mu.mean(0), var.mean(0)
    spread = mu.std(0, unbiased=False) if len(mu) > 1 else torch.zeros_like(mu_bar)
    # running vs the batches' average, in within-batch sigmas plus the between-batch spread of means
    stale_z = (rm - mu_bar).abs() / ((var_bar + eps).sqrt() + spread)
    stale_log = ((rv + eps) / (var_bar + eps)).log().abs()
    # between-batch spread of means over what i.i.d. batches of this size would show (~1 if i.i.d.)
    iid_se = img.std(0, unbiased=False) / math.sqrt(max(1, len(img) // len(mu)))
    composition = spread / (iid_se + 1e-3 * (var_bar + eps).sqrt())
    dead_train = var.amax(0) <= 1e-10 * (1 + mu_bar * mu_bar)
    s = {
        "dead_fraction": dead_train.float().mean().item(),
        "mean_z": z.mean().item(),
        "max_z": z.max().item(),
        "mean_abs_log_var_ratio": log_ratio.mean().item(),
        "max_abs_log_var_ratio": log_ratio.max().item(),
        "stale_mean_z": stale_z.mean().item(),
        "stale_max_z": stale_z.max().item(),
        "stale_mean_log_var": stale_log.mean().item(),
        "stale_max_log_var": stale_log.max().item(),
        "composition": composition.mean().item(),
        "stale_channels": _top(stale_z + stale_log, c.top_k),
        "composition_channels": _top(composition, c.top_k),
    }
    ch = {
        "batch_mean": mu_bar,
        "batch_var": var_bar,
        "dead_train": dead_train,
        "z": z,
        "log_var_ratio": log_ratio,
        "stale_z": stale_z,
        "stale_log_var": stale_log,
        "composition": composition,
    }
    return s, ch


def _val_figures(dev: torch.Tensor, rv, eps: float, dead: torch.Tensor, c: HealthConfig) -> tuple[dict, dict]:
    """Validation deviation in running sigmas; a channel dead in training and far off on validation collapsed."""
    val_z = dev / (rv + eps).sqrt()
    collapsed = dead & (val_z > c.collapse_z_threshold)
    s = {
        "val_max_z": val_z.max().item(),
        "collapsed_channels": collapsed.nonzero().flatten().tolist(),
        "collapsed_val_z": val_z[collapsed].tolist(),
    }
    return s, {"val_z": val_z, "collapsed": collapsed}


@torch.no_grad()
def measure(
    model: nn.Module, batches, val_batches, cfg: HealthConfig, device=None
) -> tuple[dict[str, dict], dict[str, dict]]:
    """Per BN-like layer: training batches in train mode, validation batches in eval mode; buffers kept.

    Returns (stats, per_channel): per layer, the scalar figures the monitor judges (and logs), and the per-channel
    tensors they summarize (running_mean/var, dead on training batches, running vs batch statistics, batch
    composition, validation deviation in running sigmas)."""
    per_batch = {name: [] for name, _ in bn_layers(model)}  # (mu_B, var_B, per-image means) per batch
    val = {name: {"dev": None, "n": 0} for name in per_batch}

    def on_train(name, module, x):
        xc = _per_channel(x)
        img_means = x.detach().float().flatten(2).mean(2) if x.ndim > 2 else x.detach().float()
        per_batch[name].append((xc.mean(1), xc.var(1, unbiased=False), img_means))

    def on_val(name, module, x):
        dev = (_per_channel(x) - module.running_mean.float()[:, None]).abs().amax(1)
        v = val[name]
        v["dev"] = dev if v["dev"] is None else torch.maximum(v["dev"], dev)
        v["n"] += 1

    _collect(model, batches, cfg.batches, True, on_train, device)
    if val_batches is not None:
        _collect(model, val_batches, cfg.val_batches, False, on_val, device)

    stats, channels = {}, {}
    for name, m in bn_layers(model):
        rm, rv = m.running_mean.float(), m.running_var.float()
        eps = float(getattr(m, "eps", 1e-5))
        s, ch = _running_figures(rm, rv, cfg)
        dead = ch["tiny_var"].clone()
        if per_batch[name]:
            more, more_ch = _batch_figures(per_batch[name], rm, rv, eps, cfg)
            s.update(more)
            ch.update(more_ch)
            dead |= more_ch["dead_train"]
        if val[name]["n"]:
            more, more_ch = _val_figures(val[name]["dev"], rv, eps, dead, cfg)
            s.update(more)
            ch.update(more_ch)
        stats[name], channels[name] = s, ch
    return stats, channels


def _summary_row(stats: dict[str, dict], gap: float | None) -> dict:
    """The flat `health/*` figures over all layers."""
    last = list(stats)[-1]
    total = sum(s["channels"] for s in stats.values())
    return {
        "health/eval_train_loss_gap": gap,
        "health/running_var_min": min(s["running_var_min"] for s in stats.values()),
        "health/last_bn_running_var_min": stats[last]["running_var_min"],
        "health/n_tiny_var": sum(s["n_tiny_var"] for s in stats.values()),
        "health/n_denormal_var": sum(s["n_denormal_var"] for s in stats.values()),
        "health/dead_fraction": sum(s.get("dead_fraction", 0) * s["channels"] for s in stats.values()) / total,
        "health/max_mean_z": max(s.get("mean_z", 0) for s in stats.values()),
        "health/max_stale_z": max(s.get("stale_max_z", 0) for s in stats.values()),
        "health/max_composition": max(s.get("composition", 0) for s in stats.values()),
        "health/max_val_z": max(s.get("val_max_z", 0) for s in stats.values()),
    }


def _stale(s: dict, c: HealthConfig) -> bool:
    return (
        s.get("stale_mean_z", 0) > c.discrepancy_threshold
        or s.get("stale_mean_log_var", 0) > c.log_var_threshold
        or s.get("stale_max_z", 0) > c.channel_z_threshold
        or s.get("stale_max_log_var", 0) > c.channel_log_var_threshold
    )


def _events(stats: dict[str, dict], gap, cfg: HealthConfig, precise_gap) -> dict[str, list[dict]]:
    """Per cause, the layers that show it (with channels and figures); see `judge`."""
    found: dict[str, list[dict]] = {}
    collapsed = [n for n, s in stats.items() if s.get("collapsed_channels")]
    if collapsed:
        found["collapsed_variance"] = [
            {
                "layer": n,
                "channels": stats[n]["collapsed_channels"],
                "val_z": [round(z, 1) for z in stats[n]["collapsed_val_z"]],
                "running_var_min": stats[n]["running_var_min"],
            }
            for n in collapsed
        ]
    if gap is not None and gap > cfg.gap_threshold:
        stale = sorted((n for n, s in stats.items() if _stale(s, cfg)), key=lambda n: -stats[n]["stale_max_z"])
        if not stale and precise_gap is not None and precise_gap <= cfg.gap_threshold and precise_gap < gap / 2:
            # Precise BN closes the gap, yet no layer is far off on its own: name the most discrepant layers
            score = {n: s.get("stale_max_z", 0) + s.get("stale_max_log_var", 0) for n, s in stats.items()}
            stale = sorted(stats, key=lambda n: -score[n])
        composed = sorted(
            (n for n, s in stats.items() if s.get("composition", 0) > cfg.composition_threshold),
            key=lambda n: -stats[n]["composition"],
        )
        if stale:
            found["stale_ema"] = [
                {
                    "layer": n,
                    "channels": stats[n]["stale_channels"],
                    "stale_mean_z": stats[n]["stale_mean_z"],
                    "stale_mean_log_var": stats[n]["stale_mean_log_var"],
                    **({"precise_gap": precise_gap} if precise_gap is not None else {}),
                }
                for n in stale[:3]
            ]
        elif composed and not collapsed:
            found["batch_composition"] = [
                {"layer": n, "channels": stats[n]["composition_channels"], "composition": stats[n]["composition"]}
                for n in composed[:3]
            ]
    return found


def judge(
    stats: dict[str, dict], gap: float | None, cfg: HealthConfig, precise_gap: float | None = None
) -> tuple[dict, dict[str, list[dict]]]:
    """The verdict on `measure`'s stats and the eval-mode minus train-mode gap (None: not measured).

    `precise_gap`: the same gap with every BN layer's running statistics recomputed over the training batches
    (Precise BN, on a copy of the model), when measured (`diagnose` does; bnlab's runs do not pass it). A gap that
    Precise BN closes (to within the threshold and by more than half) is a stale EMA even when no single layer's
    running statistics are far off: small per-layer discrepancies add up over many layers.

    Returns (row, found): flat `health/*` metrics, and per cause ("collapsed_variance", "stale_ema",
    "batch_composition") the layers (with channels and figures) that show it."""
    row = _summary_row(stats, gap)
    found = _events(stats, gap, cfg, precise_gap)
    row["health/n_collapsed"] = sum(len(x["channels"]) for x in found.get("collapsed_variance", []))
    for kind in EVENTS:
        row[f"health/{kind}"] = int(kind in found)
    return row, found


class BNHealthMonitor:
    """bnlab's own monitor: `check` at every evaluation of a run, events kept for summary.json and the checkpoint."""

    def __init__(self, cfg: HealthConfig):
        self.cfg = cfg
        self.events: list[dict] = []
        self.last_measurement: tuple[dict, dict] | None = None  # (stats, per_channel) of the latest check

    def layer_stats(self, model: nn.Module, batches, val_batches=None) -> dict[str, dict]:
        """Per-layer statistics: training batches in train mode, validation batches in eval mode; buffers kept."""
        return measure(model, batches, val_batches, self.cfg)[0]

    @staticmethod
    def running_var_extremes(model: nn.Module) -> dict:
        layers = bn_layers(model)
        if not layers:
            return {}
        allv = torch.cat([m.running_var.detach().float() for _, m in layers])
        return {
            "health/running_var_min": allv.min().item(),
            "health/running_var_max": allv.max().item(),
            "health/last_bn_running_var_min": layers[-1][1].running_var.detach().float().min().item(),
        }

    # --- verdict ------------------------------------------------------------------------------------------
    def check(self, model: nn.Module, batches, metrics: dict, epoch: int | None = None, val_batches=None) -> dict:
        """Measure, judge, remember any events; return flat `health/*` metrics for the epoch's row."""
        stats, channels = measure(model, batches, val_batches, self.cfg)
        self.last_measurement = (stats, channels)
        if not stats:
            return {}
        gap = None
        if "val_loss_running" in metrics and "val_loss_batch" in metrics:
            gap = metrics["val_loss_running"] - metrics["val_loss_batch"]
        row, found = judge(stats, gap, self.cfg)
        for kind, layers in found.items():
            self.events.append({"event": kind, "epoch": epoch, "eval_train_loss_gap": gap, "layers": layers})
        return row

    def describe(self) -> str:
        if not self.events:
            return "BN health: no event"
        parts = []
        for kind, label in EVENTS.items():
            mine = [e for e in self.events if e["event"] == kind]
            if not mine:
                continue
            e = mine[-1]
            layers = ", ".join(f"{x['layer']} (channels {x['channels']})" for x in e["layers"])
            gap = e["eval_train_loss_gap"]
            parts.append(
                f"{len(mine)} {label} event(s), last at epoch {e['epoch']}"
                + (f" (eval-mode minus train-mode val loss {gap:.3g})" if gap is not None else "")
                + f" in {layers}; remedies: {REMEDIES[kind]}"
            )
        return "BN health: " + ". ".join(parts) + "."


def build_monitor(cfg) -> BNHealthMonitor | None:
    hcfg = cfg.get("health") if cfg is not None else None
    if not hcfg or not hcfg.get("enabled", True):
        return None
    return BNHealthMonitor(HealthConfig.from_cfg(hcfg))
