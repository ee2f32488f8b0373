"""The forum's BCE + soft-F1 loss against a hand computation; both losses train through the entry point."""

from __future__ import annotations

import math

import torch

from bnlab.runner import run
from bnlab.train.losses import bce_soft_f1, soft_f1


def test_soft_f1_hand_computed():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], dtype=torch.float64)
    targets = torch.tensor([[1, 0], [0, 1], [0, 1]], dtype=torch.float64)
    # class 0: TP .9, FP .2 + .6 = .8, FN .1 -> 1.8 / 2.7; class 1: TP 1.2, FP .1, FN .2 + .6 = .8 -> 2.4 / 3.3
    expected = (1.8 / 2.7 + 2.4 / 3.3) / 2
    assert math.isclose(soft_f1(probs, targets, eps=0).item(), expected, rel_tol=1e-12)
    perfect = soft_f1(targets, targets)
    assert math.isclose(perfect.item(), 1.0, rel_tol=1e-6)


def test_bce_soft_f1_is_bce_minus_f1_and_negative_when_confident():
    logits = torch.tensor([[8.0, -8.0, -8.0], [-8.0, 8.0, -8.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    loss = bce_soft_f1(logits, labels)
    # near-perfect predictions: BCE ~0; soft F1 is 1, 1 and 0 (class 2 absent from the batch) -> macro 2/3
    assert math.isclose(loss.item(), -2 / 3, abs_tol=1e-3)
    assert loss.item() < bce_soft_f1(torch.zeros_like(logits), labels).item()


def test_forum_loss_trains_through_entry_point(tiny_cfg):
    summary = run(tiny_cfg("loss=bce_soft_f1", "optim=adam", "train.epochs=1"))
    assert summary["status"] == "completed" and math.isfinite(summary["final"]["train_loss"])
