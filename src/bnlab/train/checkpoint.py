"""Checkpoints: written atomically each epoch; a corrupt one is reported by path before training resumes.

`Progress` is where a run stands (epochs, steps, history, wall time); `save` writes it with the model, optimizer,
schedule, fp16's GradScaler and each hook's state (train/hooks.py), and `resume` restores all of them, so a
killed run continues exactly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bnlab.train.distributed import SINGLE
from bnlab.train.run_dir import RunDir
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


def state_mismatch(own: dict, saved: dict) -> str | None:
    """How a saved state_dict differs from a model's (the first keys missing, unexpected or of another shape), in
    one line; None when it fits."""
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    shapes = [
        f"{k} {tuple(saved[k].shape)} saved vs {tuple(own[k].shape)} here"
        for k in own
        if k in saved and hasattr(saved[k], "shape") and tuple(saved[k].shape) != tuple(own[k].shape)
    ]
    parts = [
        f"{len(found)} {what} (first: {found[0]})"
        for what, found in (("of another shape", shapes), ("missing", missing), ("unexpected", unexpected))
        if found
    ]
    return "; ".join(parts) or None


def load_model_state(model, path: Path) -> dict:
    """Load checkpoint `path` into `model` and return the checkpoint; one that another model wrote (another width,
    depth, norm or class count) is a CheckpointError naming the file and the first differing key."""
    state = load_checkpoint(path)
    problem = state_mismatch(model.state_dict(), state["model"])
    if problem:
        raise CheckpointError(f"checkpoint {path} was written by another model than this config builds: {problem}")
    model.load_state_dict(state["model"])
    return state


@dataclass
class Progress:
    """Where training stands: saved in every checkpoint, restored by `resume`."""

    epoch: int = 0  # epochs completed
    step: int = 0
    history: list[dict] = field(default_factory=list)  # one row per completed epoch (metrics.csv)
    wall_before: float = 0.0  # seconds trained by earlier attempts of this run
    started: float = field(default_factory=time.time)

    def wall_time(self) -> float:
        return self.wall_before + time.time() - self.started


def _hook_states(state: dict) -> dict:
    """{hook name: its state}. Checkpoints written before fit took hooks kept the health monitor's events alone."""
    return state["hooks"] if "hooks" in state else {"health": {"events": state.get("health_events", [])}}


def resume(cfg, rd: RunDir, job, hooks=(), rank=SINGLE) -> Progress:  # job: train.build.Built (not imported: no cycle)
    """Continue from <run_dir>/checkpoint.pt when there is one (and train.resume), else start fresh."""
    if not (cfg.train.get("resume", True) and rd.checkpoint.exists()):
        if rank.main:
            print(f"[bnlab] training {rd.root}")
        return Progress()
    try:
        state = load_model_state(job.model, rd.checkpoint)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; delete it to train this run from scratch, or set train.resume=false") from None
    job.optimizer.load_state_dict(state["optimizer"])
    job.schedule.load_state_dict(state["schedule"])
    if getattr(job, "scaler", None) is not None and state.get("scaler"):  # fp16: the loss scale and its growth count
        job.scaler.load_state_dict(state["scaler"])
    states = _hook_states(state)
    for hook in hooks:
        hook.load_state_dict(states.get(hook.name, {}))
    print(f"[bnlab] resuming {rd.root} from epoch {state['epoch']}")
    return Progress(state["epoch"], state["step"], state["history"], state.get("wall_time", 0.0))


def save(rd: RunDir, job, progress: Progress, hooks=()) -> None:
    save_checkpoint(
        rd.checkpoint,
        model=job.model.state_dict(),
        optimizer=job.optimizer.state_dict(),
        schedule=job.schedule.state_dict(),
        epoch=progress.epoch,
        step=progress.step,
        history=progress.history,
        wall_time=progress.wall_time(),
        hooks={hook.name: hook.state_dict() for hook in hooks},
        scaler=job.scaler.state_dict() if getattr(job, "scaler", None) is not None else None,
    )
