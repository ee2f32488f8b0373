"""Validation with running (EMA) statistics, with batch statistics, and with population statistics.

The gap between the first two is the central symptom bnlab studies ("When does BatchNorm fail? When mu_EMA,
sigma_EMA do not approximate mu_B, sigma_B" - Wu, Devils in BatchNorm). Batch-mode evaluation puts the model
in train mode but restores every buffer afterwards, so it never changes the running statistics and the loop
needs to know nothing about which normalization layers the model has. "precise" evaluates a copy of the model
whose BN statistics were recomputed over training batches (Precise BN); "adaptive" recomputes them over the
validation data itself (Adaptive BN, the target domain). Neither touches the model being trained.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch

from bnlab.norm import precise_bn

EVAL_MODES = ("running", "batch", "precise", "adaptive")


@contextmanager
def preserved_buffers(model: torch.nn.Module):
    saved = {name: buf.detach().clone() for name, buf in model.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, buf in model.named_buffers():
                buf.copy_(saved[name])


@contextmanager
def mode(model: torch.nn.Module, train: bool):
    was_training = model.training
    model.train(train)
    try:
        yield
    finally:
        model.train(was_training)


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
    model, loader, loss_fn, eval_mode: str = "running", train_loader=None, precise_samples: int = 8192
) -> dict:
    """Return {'loss', 'err'} on `loader` with the given statistics mode.

    "precise" needs `train_loader` (its batches give the population statistics, `precise_samples` samples).
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
        frozen = copy.deepcopy(model)
        precise_bn(frozen, source, precise_samples)
        with mode(frozen, train=False):
            return _loop(frozen, loader, loss_fn)
    raise ValueError(f"unknown eval mode {eval_mode!r} (allowed: {', '.join(EVAL_MODES)})")
