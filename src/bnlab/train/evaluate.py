"""Validation with running (EMA) statistics, with batch statistics, and with population statistics.

The gap between the first two is the central symptom bnlab studies ("When does BatchNorm fail? When mu_EMA,
sigma_EMA do not approximate mu_B, sigma_B" - Wu, Devils in BatchNorm). Batch-mode evaluation puts the model
in train mode but restores every buffer afterwards, so it never changes the running statistics and the loop
needs to know nothing about which normalization layers the model has. "precise" evaluates a copy of the model
whose BN statistics were recomputed over training batches (Precise BN); "adaptive" recomputes them over the
validation data itself (Adaptive BN, the target domain). "ema_frozen" re-runs the training EMA, from the initial
statistics and for as many training batches as training took, on a copy of the current (frozen) model: its gap to
"precise" is the EMA's initial-value bias and noise, its gap to "running" the staleness of averaging a moving
model. None of them touches the model being trained.
"""

from __future__ import annotations

import copy

import torch
from omegaconf import ListConfig

from bnlab.norm import frozen_ema, precise_bn
from bnlab.norm.modes import mode, preserved_buffers

EVAL_MODES = ("running", "batch", "precise", "adaptive", "ema_frozen")


def eval_variants(eval_cfg) -> list[tuple[str, str, int]]:
    """(mode, metric suffix, population samples) per evaluation. A list in eval.precise_samples evaluates
    precise/adaptive once per size, named e.g. val_err_precise_512 (how many samples Precise BN needs)."""
    samples = eval_cfg.precise_samples  # conf/train.yaml holds the default
    sizes = [int(n) for n in samples] if isinstance(samples, list | ListConfig) else [int(samples)]
    out = []
    for m in eval_cfg.modes:
        if m in ("precise", "adaptive") and len(sizes) > 1:
            out += [(m, f"{m}_{n}", n) for n in sizes]
        else:
            out.append((m, m, sizes[-1]))
    return out


@torch.no_grad()
def _loop(model, loader, loss_fn) -> dict:
    loss_sum = torch.zeros((), device=loader.device)
    wrong = torch.zeros((), device=loader.device, dtype=torch.long)
    n = 0
    for x, y, *domain in loader:
        logits = model(x, *domain)  # domain ids, when the loader has them (data/domains.py)
        loss_sum += loss_fn(logits, y).float() * len(y)
        wrong += (logits.argmax(1) != y).sum()
        n += len(y)
    return {"loss": loss_sum.item() / max(n, 1), "err": wrong.item() / max(n, 1)}


def evaluate(
    model,
    loader,
    loss_fn,
    eval_mode: str = "running",
    train_loader=None,
    precise_samples: int | None = None,
    ema_frozen_steps: int | None = None,
) -> dict:
    """Return {'loss', 'err'} on `loader` with the given statistics mode.

    "precise" and "ema_frozen" need `train_loader` (training batches: Precise BN's `precise_samples` samples,
    or the EMA re-run's batches, cycled); "precise" and "adaptive" need `precise_samples` (eval.precise_samples);
    `ema_frozen_steps` (eval.ema_frozen_steps) caps the EMA re-run, None replays every step trained so far.
    """
    if eval_mode == "running":
        with mode(model, train=False):
            return _loop(model, loader, loss_fn)
    if eval_mode == "batch":
        with mode(model, train=True), preserved_buffers(model):
            return _loop(model, loader, loss_fn)
    if eval_mode in ("precise", "adaptive"):
        source = train_loader if eval_mode == "precise" else loader
        if source is None:
            raise ValueError("eval mode 'precise' needs the training loader (evaluate(..., train_loader=...))")
        if precise_samples is None:
            raise ValueError(f"eval mode {eval_mode!r} needs precise_samples (eval.precise_samples)")
        frozen = copy.deepcopy(model)
        precise_bn(frozen, source, precise_samples)
        with mode(frozen, train=False):
            return _loop(frozen, loader, loss_fn)
    if eval_mode == "ema_frozen":
        if train_loader is None:
            raise ValueError("eval mode 'ema_frozen' needs the training loader (evaluate(..., train_loader=...))")
        frozen = copy.deepcopy(model)
        frozen_ema(frozen, train_loader, max_steps=ema_frozen_steps)
        with mode(frozen, train=False):
            return _loop(frozen, loader, loss_fn)
    raise ValueError(f"unknown eval mode {eval_mode!r} (allowed: {', '.join(EVAL_MODES)})")
