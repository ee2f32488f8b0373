"""Seeds: the process-wide ones of a run, and the per-epoch seed every sampler, loader and augmentation uses."""

from __future__ import annotations

import random

import numpy as np
import torch


def epoch_seed(seed: int, epoch: int) -> int:
    """One seed per (run seed, epoch): batch order and augmentation differ per epoch and replay after a resume."""
    return seed * 1_000_003 + epoch  # a prime stride: (seed, epoch) pairs never collide for epoch < 1_000_003


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
