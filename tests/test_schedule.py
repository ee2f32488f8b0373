"""The LR schedule: ReduceLROnPlateau's reductions survive the per-batch steps (they were undone every batch)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from bnlab.train.optim import Schedule


def test_plateau_reduction_persists_through_batches():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    cfg = OmegaConf.create({"name": "plateau", "monitor": "train_loss", "factor": 0.2, "patience": 1, "min_lr": 0.0})
    sched = Schedule(cfg, opt, steps_per_epoch=5, epochs=10)
    lrs = []
    for _epoch in range(6):
        for _ in range(5):
            opt.step()
            sched.step_batch()
        sched.step_epoch({"train_loss": 1.0})  # never improves: reduce after every 2 flat epochs
        lrs.append(sched.lr())
    assert lrs == pytest.approx([0.02, 0.02, 0.004, 0.004, 0.0008, 0.0008])
