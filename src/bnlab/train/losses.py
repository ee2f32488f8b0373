"""Losses take (logits, integer labels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bnlab.registry import Registry

# name -> builder(its conf/loss/<name>.yaml keys) returning loss(logits, labels)
LOSSES = Registry("loss", runtime=("num_classes",))


def soft_f1(probs: torch.Tensor, targets: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Macro soft F1 over classes: TP, FP, FN summed over the batch with probabilities in place of 0/1 decisions."""
    tp = (probs * targets).sum(0)
    fp = (probs * (1 - targets)).sum(0)
    fn = ((1 - probs) * targets).sum(0)
    return (2 * tp / (2 * tp + fp + fn + eps)).mean()


def bce_soft_f1(logits: torch.Tensor, labels: torch.Tensor, f1_weight: float = 1.0) -> torch.Tensor:
    """The forum thread's multi-label objective on one-hot targets: BCE - soft F1 (so it goes negative, as there)."""
    targets = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, targets) - f1_weight * soft_f1(torch.sigmoid(logits), targets)


@LOSSES.register("cross_entropy")
def cross_entropy(num_classes: int, label_smoothing: float):
    smoothing = float(label_smoothing)
    return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=smoothing)


@LOSSES.register("bce_soft_f1")
def bce_soft_f1_loss(num_classes: int, f1_weight: float):
    weight = float(f1_weight)
    return lambda logits, y: bce_soft_f1(logits, y, weight)


def build_loss(cfg, num_classes: int):
    return LOSSES.build(cfg, num_classes=num_classes)
