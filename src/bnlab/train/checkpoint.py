"""Checkpoints: written atomically each epoch; a corrupt one is reported by path before training resumes."""

from __future__ import annotations

from pathlib import Path

import torch

from bnlab.utils.io import atomic_torch_save


class CheckpointError(RuntimeError):
    pass


def save_checkpoint(path: Path, **state) -> None:
    atomic_torch_save(path, state)


def load_checkpoint(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several types for truncated/garbage files
        raise CheckpointError(
            f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}: {e}); "
            "delete it to restart this run from scratch, or set train.resume=false"
        ) from e
    required = {"model", "optimizer", "schedule", "epoch", "step", "history"}
    if not isinstance(state, dict) or not required <= set(state):
        raise CheckpointError(f"checkpoint {path} is not a bnlab checkpoint (missing {required - set(state)})")
    return state
