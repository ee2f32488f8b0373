"""Seeds: the process-wide ones of a run, and the per-epoch seed every sampler, loader and augmentation uses."""

from __future__ import annotations

import os
import random
from contextlib import contextmanager

import numpy as np
import torch


def epoch_seed(seed: int, epoch: int) -> int:
    """One seed per (run seed, epoch): batch order and augmentation differ per epoch and replay after a resume."""
    return seed * 1_000_003 + epoch  # a prime stride: (seed, epoch) pairs never collide for epoch < 1_000_003


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seeds, and train.deterministic: deterministic kernels (cuDNN autotuning off), or the fastest ones (cuDNN
    benchmarks each conv shape once and keeps the fastest algorithm, which may differ between runs)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS needs it (CUDA >= 10.2)
    torch.backends.cudnn.benchmark = not deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)  # set both ways: sweep jobs share a process


@contextmanager
def rng_kept():
    """Leave the process's random generators (torch's CPU one, Python's, NumPy's) as found by what runs inside: a
    DataLoader that shuffles draws its order's seed from torch's generator each time it is iterated."""
    states = torch.random.get_rng_state(), random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        torch.random.set_rng_state(states[0])
        random.setstate(states[1])
        np.random.set_state(states[2])
