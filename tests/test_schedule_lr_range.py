"""The lr_range schedule (LR range test) and schedule.length_epochs, stepped through the real Schedule."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from bnlab.config_errors import ConfigError
from bnlab.train.optim import Schedule


def lrs(cfg: dict, steps_per_epoch: int, epochs: int, base_lr: float = 0.1) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    sched = Schedule(OmegaConf.create(cfg), opt, steps_per_epoch, epochs)
    out = []
    for _ in range(steps_per_epoch * epochs):
        out.append(sched.lr())
        sched.step_batch()
    return out


def test_lr_range_is_geometric_from_start_to_end_whatever_optim_lr():
    for base in (0.1, 3.0):
        seq = lrs({"name": "lr_range", "start_lr": 1e-4, "end_lr": 10.0}, steps_per_epoch=10, epochs=5, base_lr=base)
        assert seq[0] == pytest.approx(1e-4, rel=1e-9) and seq[-1] == pytest.approx(10.0, rel=1e-9)
        ratios = [b / a for a, b in zip(seq, seq[1:])]
        assert all(r == pytest.approx(math.exp(math.log(1e5) / 49), rel=1e-9) for r in ratios)


@pytest.mark.parametrize("key", ["start_lr", "end_lr"])
def test_lr_range_rejects_bad_bounds_naming_the_key(key):
    cfg = {"name": "lr_range", "start_lr": 1e-4, "end_lr": 10.0, key: -1}
    with pytest.raises(ConfigError, match=f"schedule.{key}"):
        lrs(cfg, 2, 2)


def test_length_epochs_stops_a_linear_schedule_half_way():
    """Training 2 of 4 scheduled epochs ends at the peak of a warm-up/decay schedule that peaks at the middle."""
    full = lrs({"name": "linear", "warmup_epochs": 2, "final_factor": 0.0}, steps_per_epoch=5, epochs=4)
    half = lrs(
        {"name": "linear", "warmup_epochs": 2, "final_factor": 0.0, "length_epochs": 4}, steps_per_epoch=5, epochs=2
    )
    assert half == full[: len(half)] and max(half) == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="schedule.length_epochs"):
        lrs(
            {"name": "linear", "warmup_epochs": 0, "final_factor": 0.0, "length_epochs": 1}, steps_per_epoch=5, epochs=2
        )
