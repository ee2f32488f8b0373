"""BN health for any model: `diagnose(model, train_data, val_data)` and a hook for a plain training loop.

The same measurements and verdict as bnlab's own monitor (health.py's `measure` and `judge`), on a model bnlab did
not build: any nn.Module whose BN-like layers (nn.BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm with running
statistics, bnlab's layers: anything with 1-d running_mean/running_var buffers) hold running statistics.

    from bnlab.diagnostics import diagnose
    report = diagnose(model, train_loader, val_loader, loss_fn=nn.functional.cross_entropy, val_batches=8)
    print(report)                     # per-layer table, events with their causes, what to try
    report.to_json("bn_health.json")  # every figure, per layer and per channel

Batches are tensors or (x, y, ...) tuples/lists (a DataLoader's); only the first `batches` training and
`val_batches` validation batches are used (HealthConfig: 2 and 4 by default, as in bnlab's runs). The eval-mode
minus train-mode gap on the validation batches is the loss difference when a `loss_fn` is given (and the batches
carry targets), otherwise the KL divergence of eval-mode from train-mode predictions (softmax over dim 1, in nats
like a loss) or, for outputs with a single channel, the relative squared difference of the outputs.

The model is left exactly as found: every module's train/eval flag, every buffer (running statistics and
num_batches_tracked), parameters, gradients, and the global RNG state (dropout in train-mode passes draws from a
forked generator, on CPU and CUDA; reading a DataLoader's batches, which draws its shuffle seed, is undone too).
"""

from __future__ import annotations

import copy
import json
import math
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from itertools import islice
from pathlib import Path

import torch
from torch import nn

from bnlab.diagnostics.health import EVENTS, HealthConfig, bn_layers, judge, measure
from bnlab.norm.modes import preserved_buffers
from bnlab.norm.precise import precise_bn
from bnlab.utils.seeding import rng_kept

# What to try per cause, for a model outside bnlab (plain PyTorch terms; bnlab's runs print health.REMEDIES).
ADVICE: dict[str, list[str]] = {
    "collapsed_variance": [
        "a larger eps on the BN layers (1e-3 to 0.1): eval mode multiplies a collapsed channel by up to 1/sqrt(eps)",
        "a lower learning rate: fewer channels die (their input constant on all training data, e.g. zero after ReLU)",
        "GroupNorm or LayerNorm in place of BN: no running statistics to collapse",
        "not Precise BN: the channel is constant on training data, so recomputed statistics collapse again",
    ],
    "stale_ema": [
        "Precise BN: recompute running_mean/var with the final weights before evaluating (reset_running_stats(), "
        "momentum=None, ~100 train-mode forward passes under torch.no_grad())",
        "a lower learning rate, or decay it: the weights move faster than the running average follows",
        "a larger BN momentum (a shorter average), or more steps at a small lr at the end",
        "Frozen BN when fine-tuning with small batches (torchvision.ops.FrozenBatchNorm2d, or BN layers kept in eval)",
    ],
    "batch_composition": [
        "i.i.d. batches: shuffle across classes/domains instead of batches sorted by class, domain or source",
        "GroupNorm or LayerNorm: normalization that does not depend on the batch",
        "Frozen BN (the same fixed statistics in training and evaluation) or Batch Renorm",
        "not Precise BN or a different momentum: the model relies on each batch's own statistics, no EMA fix helps",
    ],
}


class HealthInputError(ValueError):
    """Batches or a loss the diagnosis cannot use (named in the message)."""


@dataclass
class HealthReport:
    """What `diagnose` found. `layers[name]` holds the layer's figures (as bnlab's monitor logs them) and, under
    "per_channel", one list per figure with a value per channel. `events`: one dict per cause found ("cause",
    "label", "layers" with channels and figures, "try": what to try). `row`: the flat `health/*` metrics."""

    layers: dict[str, dict]
    gap: float | None
    gap_kind: str | None  # "loss", "kl" or "relative_output"; None without validation batches
    losses: dict[str, float]  # eval-mode / train-mode validation loss (or nothing without a loss function)
    events: list[dict]
    notes: list[str]
    row: dict
    config: dict = field(default_factory=dict)
    precise: dict = field(default_factory=dict)  # the gap with Precise BN's statistics (on a copy), when measured

    @property
    def ok(self) -> bool:
        return not self.events

    @property
    def causes(self) -> list[str]:
        return [e["cause"] for e in self.events]

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(_finite(self.to_dict()), indent=1, default=_jsonable)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    def text(self, max_layers: int | None = None) -> str:
        lines = [layer_table(self.layers, max_layers)]
        if self.gap is not None:
            label = {
                "loss": "eval-mode minus train-mode val loss",
                "kl": "KL(train-mode || eval-mode predictions) on val batches, nats",
                "relative_output": "relative squared difference of eval-mode and train-mode outputs",
            }[self.gap_kind]
            extra = f" ({self.losses['eval_mode']:.4g} vs {self.losses['train_mode']:.4g})" if self.losses else ""
            lines.append(f"{label}: {self.gap:.4g}{extra} (events need > {self.config.get('gap_threshold')})")
            if "gap" in self.precise:
                pl = self.precise.get("losses") or {}
                extra = f" ({pl['eval_mode']:.4g} vs {pl['train_mode']:.4g})" if pl else ""
                lines.append(
                    f"  the same with running statistics recomputed on the {self.precise['batches']} training batches "
                    f"(Precise BN, on a copy): {self.precise['gap']:.4g}{extra}"
                )
        if not self.events:
            lines.append("BN health: no event")
        for e in self.events:
            lines.append(f"EVENT {e['label']}:")
            for x in e["layers"]:
                lines.append(f"  {x['layer']}:")
                lines += [f"    {c}" for c in _describe_channels(e["cause"], x, self.layers[x["layer"]])]
            lines.append("  what to try:")
            lines += [f"   - {t}" for t in e["try"]]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    __str__ = text


def _finite(x):
    """NaN and infinities as null: strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def _jsonable(x):
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return str(x)


def layer_table(stats: dict[str, dict], max_layers: int | None = None) -> str:
    """The per-layer table `bnlab health` prints: running_var range, tiny/denormal counts, dead fraction, running
    vs batch statistics (mean_z, stale_z), batch composition and the largest validation deviation (val_z)."""
    w = max([8, *(len(n) + 2 for n in stats)])
    head = (
        f"{'layer':<{w}}{'C':>5}{'rv_min':>11}{'rv_max':>11}{'tiny':>6}{'denorm':>7}{'dead':>7}{'mean_z':>8}"
        f"{'stale_z':>8}{'compos':>8}{'val_z':>10}"
    )
    rows = [head]
    items = list(stats.items())
    if max_layers is not None and len(items) > max_layers:
        items = items[:max_layers]
    for name, s in items:
        rows.append(
            f"{name:<{w}}{s['channels']:>5}{s['running_var_min']:>11.3g}{s['running_var_max']:>11.3g}"
            f"{s['n_tiny_var']:>6}{s['n_denormal_var']:>7}{s.get('dead_fraction', 0):>7.2f}{s.get('mean_z', 0):>8.2f}"
            f"{s.get('stale_max_z', 0):>8.2f}{s.get('composition', 0):>8.2f}{s.get('val_max_z', 0):>10.3g}"
        )
    if len(items) < len(stats):
        rows.append(f"... {len(stats) - len(items)} more layers (all in the JSON)")
    return "\n".join(rows)


def _describe_channels(cause: str, x: dict, layer: dict, shown: int = 3) -> list[str]:
    pc = layer.get("per_channel", {})
    parts = []
    for c in x["channels"][:shown]:
        rv = pc["running_var"][c] if "running_var" in pc else float("nan")
        if cause == "collapsed_variance":
            parts.append(
                f"channel {c}: running_var {rv:.3g}, constant on training batches, validation input "
                f"{pc['val_z'][c]:.1f} running sigmas from its running mean"
            )
        elif cause == "stale_ema":
            parts.append(
                f"channel {c}: running mean {pc['running_mean'][c]:.3g} vs batches' {pc['batch_mean'][c]:.3g} "
                f"(stale_z {pc['stale_z'][c]:.2f}), running_var {rv:.3g} vs batches' {pc['batch_var'][c]:.3g}"
            )
        else:
            parts.append(f"channel {c}: batch means spread {pc['composition'][c]:.1f}x what i.i.d. batches give")
    if len(x["channels"]) > shown:
        parts.append(f"and {len(x['channels']) - shown} more channel(s) (in the JSON)")
    return parts


def _config(config: HealthConfig | None, overrides: dict) -> HealthConfig:
    cfg = config or HealthConfig()
    known = {f.name for f in fields(HealthConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(
            f"diagnose(): {unknown[0]!r} is not a HealthConfig option (options: {', '.join(sorted(known))})"
        )
    return replace(cfg, **overrides)


def _device(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def _first(batches, n: int, what: str) -> list:
    """The first n batches, held (a DataLoader that shuffles, or a generator, gives them once and the same)."""
    if batches is None:
        return []
    if isinstance(batches, torch.Tensor):
        batches = [batches]
    try:
        with rng_kept():  # reading a shuffling DataLoader draws a seed: the caller's training order stays its own
            out = list(islice(iter(batches), n))
    except TypeError as e:
        raise HealthInputError(f"{what}: expected an iterable of tensors or (x, y) batches, got {type(batches)}") from e
    for b in out:
        x = b[0] if isinstance(b, list | tuple) else b
        if not isinstance(x, torch.Tensor):
            raise HealthInputError(f"{what}: a batch must be a tensor or an (x, y, ...) tuple/list, got {type(b)}")
    return out


def _output(out):
    """A model output's prediction tensor: itself, the first element of a tuple, or a dict's 'logits'/'out'."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        for k in ("logits", "out", "output"):
            if isinstance(out.get(k), torch.Tensor):
                return out[k]
        out = list(out.values())
    if isinstance(out, list | tuple):
        for o in out:
            if isinstance(o, torch.Tensor):
                return o
    raise HealthInputError(f"cannot find a tensor in the model's output ({type(out)})")


@contextmanager
def _as_found(model: nn.Module):
    """Everything the diagnosis may touch is put back: each module's mode, every buffer, the RNG state."""
    flags = [(m, m.training) for m in model.modules()]
    device = _device(model)
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda), preserved_buffers(model):
            yield
    finally:
        for m, flag in flags:
            m.training = flag


@torch.no_grad()
def _gap(model, val: list, loss_fn, device) -> tuple[float, str, dict]:
    """Eval-mode minus train-mode (batch statistics, buffers restored) on the validation batches."""
    has_targets = all(isinstance(b, list | tuple) and len(b) > 1 for b in val)
    if loss_fn is not None and not has_targets:
        raise HealthInputError("a loss function needs validation batches with targets: (x, y) pairs")
    sums = {"eval_mode": 0.0, "train_mode": 0.0}
    n = 0
    kl_sum = sq_sum = ref_sum = 0.0
    kind = "loss" if loss_fn is not None else None
    for b in val:
        x = (b[0] if isinstance(b, list | tuple) else b).to(device)
        model.train(False)
        out_eval = _output(model(x))
        model.train(True)
        with preserved_buffers(model):
            out_train = _output(model(x))
        k = len(x)
        n += k
        if loss_fn is not None:
            y = b[1].to(device) if isinstance(b[1], torch.Tensor) else b[1]
            sums["eval_mode"] += float(loss_fn(out_eval, y)) * k
            sums["train_mode"] += float(loss_fn(out_train, y)) * k
        elif out_eval.ndim >= 2 and out_eval.shape[1] > 1:
            kind = "kl"
            log_p, log_q = out_train.float().log_softmax(1), out_eval.float().log_softmax(1)
            kl = (log_p.exp() * (log_p - log_q)).sum(1)  # per sample (and position, for dense outputs)
            kl_sum += kl.flatten(1).mean(1).sum().item() if kl.ndim > 1 else kl.sum().item()
        else:
            kind = "relative_output"
            sq_sum += (out_eval.float() - out_train.float()).pow(2).sum().item()
            ref_sum += out_train.float().pow(2).sum().item()
    if kind == "loss":
        losses = {k: v / max(n, 1) for k, v in sums.items()}
        return losses["eval_mode"] - losses["train_mode"], kind, losses
    if kind == "kl":
        return kl_sum / max(n, 1), kind, {}
    return sq_sum / max(ref_sum, 1e-12), kind, {}


def _notes(stats: dict, channels: dict, found: dict, gap, cfg: HealthConfig) -> list[str]:
    notes = []
    flagged = {(x["layer"], c) for x in found.get("collapsed_variance", []) for c in x["channels"]}
    for name, ch in channels.items():
        latent = ch["tiny_var"] | ch.get("dead_train", torch.zeros_like(ch["tiny_var"]))
        quiet = [c for c in latent.nonzero().flatten().tolist() if (name, c) not in flagged]
        if quiet:
            rv = ch["running_var"][quiet].min().item()
            notes.append(
                f"{name}: {len(quiet)} channel(s) constant on the training batches or with running_var < "
                f"{cfg.tiny_var:g} (smallest {rv:.3g}), e.g. {quiet[:5]}, not reached by these validation batches: "
                "harmless on them, a collapsed-variance fault for any input that reaches them"
            )
    if gap is not None and gap > cfg.gap_threshold and not found:
        notes.append(f"eval/train gap {gap:.3g} above {cfg.gap_threshold} without a cause the monitor recognises")
    return notes


def _per_channel_lists(ch: dict) -> dict:
    out = {}
    for k, v in ch.items():
        if v.dtype == torch.bool:
            out[k] = v.nonzero().flatten().tolist()  # channel indices
        else:
            out[k] = v.tolist()
    return out


def diagnose(
    model: nn.Module,
    train_data,
    val_data=None,
    loss_fn=None,
    *,
    config: HealthConfig | None = None,
    precise: bool = True,
    **overrides,
) -> HealthReport:
    """BN health of `model`: per BN-like layer and channel, the events with their causes, and what to try.

    train_data / val_data: iterables of batches, each a tensor or an (x, y, ...) tuple (e.g. DataLoaders), already
    the model's input; moved to the model's device. The first `batches` / `val_batches` of them are used.
    loss_fn(output, target) -> scalar: optional, the gap is then a loss difference.
    config: thresholds (HealthConfig(); its defaults equal conf/train.yaml's `health:`); keyword overrides change
    single fields, e.g. diagnose(model, tr, va, batches=8, val_batches=8).
    precise: also measure the gap with Precise BN's statistics from the training batches, on a deep copy of the
    model; a gap it closes is a stale EMA even if no single layer is far off (judge's `precise_gap`).
    The model is left exactly as found (module modes, buffers, parameters, gradients, RNG state)."""
    cfg = _config(config, overrides)
    train = _first(train_data, cfg.batches, "train_data")
    val = _first(val_data, cfg.val_batches, "val_data")
    if not train:
        raise HealthInputError("train_data gave no batch: the diagnosis needs at least one training batch")
    device = _device(model)
    if not bn_layers(model):
        return HealthReport({}, None, None, {}, [], ["no BN-like layer (running_mean/running_var buffers)"], {}, {})
    with _as_found(model):
        stats, channels = measure(model, train, val or None, cfg, device=device)
        gap, kind, losses = _gap(model, val, loss_fn, device) if val else (None, None, {})
        checked = _precise_gap(model, train, val, loss_fn, device) if val and precise else {}
    return make_report(stats, channels, gap, kind, losses, cfg, checked)


def _precise_gap(model, train: list, val: list, loss_fn, device) -> dict:
    """The gap again with Precise BN's running statistics (population statistics of the training batches), on a
    copy of the model: if it closes, the EMA was the problem."""
    try:
        twin = copy.deepcopy(model)
    except Exception:  # a model that cannot be copied: no check (a note says so)
        return {"skipped": "the model cannot be deep-copied"}
    precise_bn(twin, train, num_samples=sys.maxsize)
    gap, _, losses = _gap(twin, val, loss_fn, device)
    return {"gap": gap, "losses": losses, "batches": len(train)}


def make_report(
    stats: dict, channels: dict, gap, gap_kind, losses: dict, cfg: HealthConfig, precise: dict | None = None
) -> HealthReport:
    """A HealthReport from `measure`'s output and a gap (diagnose and `bnlab health` on a run directory)."""
    precise = precise or {}
    row, found = judge(stats, gap, cfg, precise.get("gap"))
    events = [
        {"cause": k, "label": EVENTS[k], "gap": gap, "layers": layers, "try": ADVICE[k]} for k, layers in found.items()
    ]
    layers = {name: {**s, "per_channel": _per_channel_lists(channels[name])} for name, s in stats.items()}
    notes = _notes(stats, channels, found, gap, cfg)
    if "skipped" in precise:
        notes.append(f"Precise BN check skipped: {precise['skipped']}")
    return HealthReport(layers, gap, gap_kind, losses, events, notes, row, asdict(cfg), precise)


class BNHealthHook:
    """BN health inside a plain PyTorch loop: `hook.step(step, batch)` after each optimizer step.

        hook = BNHealthHook(model, val_data, every=500, loss_fn=F.cross_entropy)
        for step, batch in enumerate(loader):
            ...; optimizer.step()
            hook.step(step, batch)

    Keeps the last `config.batches` training batches; at every step that is a positive multiple of `every` runs
    `diagnose` on them and the
    validation batches and logs the flat `health/*` metrics: to `log(metrics, step)` when given, else to the active
    W&B run (attached to the loop's own next row: commit=False), else one printed line. Events are collected in
    `hook.events` (with the step) and the latest report is `hook.last`."""

    def __init__(
        self,
        model: nn.Module,
        val_data,
        every: int = 500,
        log=None,
        loss_fn=None,
        config=None,
        precise: bool = True,
        **overrides,
    ):
        if every < 1:
            raise ValueError("every must be >= 1")
        self.model, self.every, self.log, self.loss_fn, self.precise = model, every, log, loss_fn, precise
        self.config = _config(config, overrides)
        self.val = _first(val_data, self.config.val_batches, "val_data")  # held: the same batches each time
        self.recent: list = []
        self.events: list[dict] = []
        self.last: HealthReport | None = None
        self._fired: int | None = None  # the step last diagnosed (gradient accumulation repeats a step)

    def _keep(self, batch) -> None:
        x = batch[0] if isinstance(batch, list | tuple) else batch
        self.recent.append(x.detach())
        del self.recent[: -self.config.batches]

    def step(self, step: int, train_batch) -> HealthReport | None:
        self._keep(train_batch)
        if step <= 0 or step % self.every or step == self._fired:
            return None
        self._fired = step
        report = diagnose(
            self.model, list(self.recent), self.val, self.loss_fn, config=self.config, precise=self.precise
        )
        self.last = report
        self.events += [{**e, "step": step} for e in report.events]
        metrics = {k: v for k, v in report.row.items() if v is not None}
        self._emit(metrics, step, report)
        return report

    def _emit(self, metrics: dict, step: int, report: HealthReport) -> None:
        if self.log is not None:
            self.log(metrics, step)
            return
        wandb = sys.modules.get("wandb")  # only a loop that imported wandb can have a run
        if wandb is not None and getattr(wandb, "run", None) is not None:
            wandb.run.log({**metrics, "health/step": step}, commit=False)
            return
        causes = ", ".join(e["label"] for e in report.events) or "no event"
        print(
            f"[bn-health] step {step}: {causes}; "
            f"running_var min {metrics.get('health/running_var_min', float('nan')):.3g}"
            + (f", eval-train gap {report.gap:.3g}" if report.gap is not None else "")
        )
