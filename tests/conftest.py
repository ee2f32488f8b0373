"""Tests compose the real config (conf/train.yaml) and shrink it: tiny data, 1-2 epochs, CPU, no W&B."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from bnlab.train.__main__ import CONF_DIR

os.environ.setdefault("WANDB_MODE", "disabled")
torch.set_num_threads(min(2, torch.get_num_threads()))

TINY = [
    "data.train_subset=512",
    "data.val_subset=256",
    "train.batch_size=64",
    "train.epochs=2",
    "train.progress=false",
    "model.width=0.5",
    "device=cpu",
    "logger=none",
]


def compose_cfg(overrides: list[str] = (), tmp_path: Path | None = None):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=False)
    if tmp_path is not None:
        with open_dict(cfg):
            cfg.out_dir = str(tmp_path / "runs")
    return cfg


@pytest.fixture
def tiny_cfg(tmp_path):
    """The real default config, shrunk to run in a second or two."""
    return lambda *extra: compose_cfg([*TINY, *extra], tmp_path)


def run_entry_point(args: list[str], cwd: Path, timeout: int = 300, **kw) -> subprocess.CompletedProcess:
    """Run `python -m bnlab.train` as a user would."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "bnlab.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def kill_when(args: list[str], cwd: Path, written: Callable[[], list[Path]], timeout: float = 600) -> Path:
    """Start `python -m bnlab.train args`, SIGKILL it once `written()` lists a file (a run's first epoch file);
    that file's run directory. The kill lands mid-run: what a resume must finish exactly."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bnlab.train", *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + timeout
    while not written() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert written(), f"no file written before the kill (exit {proc.returncode})"
    return written()[0].parent


__all__ = ["TINY", "OmegaConf", "compose_cfg", "kill_when", "run_entry_point"]


@pytest.fixture(params=["loop", "trick"])
def ghost_path(request, monkeypatch):
    """Ghost BN and micro-batch BRN pick their kernel path by group size (bnlab.norm.ghost.use_channels_trick):
    the tests' small tensors would always take the trick, so each test runs once with either path forced."""
    from bnlab.norm import ghost

    monkeypatch.setattr(ghost, "LOOP_MIN_GROUP_NUMEL", 0 if request.param == "loop" else 2**62)
    return request.param
