"""A run's identity is a hash of its resolved config (seed included), not its position in a sweep.

The same config always maps to the same directory, so re-running a sweep finds finished runs (skips them),
interrupted ones (resumes them from their checkpoint) and failed ones (reruns them only when asked).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from omegaconf import OmegaConf

from bnlab.utils.io import atomic_write_json, atomic_write_text, read_json

# keys that change where/how a run is watched, not what it computes
NON_IDENTITY_KEYS = ("out_dir", "logger", "device", "train.resume", "train.progress", "train.retry_failed")

# keys added after results were committed, left out of the identity while they hold the value that reproduces
# the earlier behaviour, so adding a switch does not rename (and re-run) every existing run directory
NEUTRAL_DEFAULTS: dict[str, object] = {
    "eval.train_images": 0,  # no eval-mode pass over training images
    "norm.schedule_unit": "steps",  # Batch Renorm schedule counted in steps (before: the only unit)
    "train.channels_last": False,  # the fast paths of bnlab.train.fast, off: the step of earlier runs
    "train.autocast": None,
    "train.compile": False,
    # the BN health monitor only watches: its new thresholds change which events are reported, not the run
    "health.val_batches": 4,
    "health.collapse_z_threshold": 10.0,
    "health.composition_threshold": 3.0,
    "train.accumulate": 1,  # one micro-batch per optimizer step (train/accumulate.py)
    "domains": {"name": "none"},  # no target domain (data/domains.py)
    "finetune": {"from": None, "norm": "keep", "recompute_stats": False},  # train from scratch (train/finetune.py)
    "eval.ema_frozen_steps": None,  # ema_frozen replays every step trained so far (train/evaluate.py)
}


_ANY = object()
LOCK_ATTEMPTS = 5  # tries 0.1 s apart before a run concludes another process holds its lock


def _pop(container: dict, dotted: str, only_if=_ANY) -> None:
    *parents, leaf = dotted.split(".")
    node = container
    for p in parents:
        node = node.get(p, {}) if isinstance(node, dict) else {}
    if isinstance(node, dict) and leaf in node and (only_if is _ANY or node[leaf] == only_if):
        node.pop(leaf)


def identity_config(cfg) -> dict:
    container = OmegaConf.to_container(cfg, resolve=True)
    for dotted in NON_IDENTITY_KEYS:
        _pop(container, dotted)
    for dotted, neutral in NEUTRAL_DEFAULTS.items():
        _pop(container, dotted, only_if=neutral)
    return container


def run_id(cfg) -> str:
    blob = json.dumps(identity_config(cfg), sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


class RunDir:
    """Paths of one run: config.yaml, metrics.csv, summary.json, checkpoint.pt, error.txt."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @classmethod
    def for_config(cls, cfg) -> RunDir:
        return cls(Path(cfg.out_dir) / str(cfg.study) / run_id(cfg))

    config = property(lambda self: self.root / "config.yaml")
    metrics = property(lambda self: self.root / "metrics.csv")
    summary_path = property(lambda self: self.root / "summary.json")
    checkpoint = property(lambda self: self.root / "checkpoint.pt")
    error = property(lambda self: self.root / "error.txt")

    @contextmanager
    def locked(self):
        """Yield True while holding an exclusive lock on <run_dir>/.lock, False if another live process holds it.

        flock is released by the kernel when its holder dies (SIGKILL included), so a killed run never leaves a
        stale lock, and two sweeps of the same study never train the same run twice.
        """
        fd = self._lock_fd()
        try:
            yield fd is not None
        finally:
            if fd is not None:
                os.close(fd)  # closing releases the flock

    def lock_until_exit(self) -> bool:
        """Take the lock for the rest of this process's life (a rank 0 that must outlive its other ranks): the
        kernel releases it when the process is gone, not Python's shutdown before that. False if another holds it."""
        return self._lock_fd() is not None

    def _lock_fd(self) -> int | None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        for attempt in range(LOCK_ATTEMPTS):  # a status probe (is_locked) holds it for microseconds
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == LOCK_ATTEMPTS - 1:
                    os.close(fd)
                    return None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    def is_locked(self) -> bool:
        """True while a live process holds <run_dir>/.lock (the run is training now); never creates anything."""
        try:
            fd = os.open(self.root / ".lock", os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def summary(self) -> dict | None:
        return read_json(self.summary_path)

    def status(self) -> str | None:
        s = self.summary()
        return s.get("status") if s else None

    def state(self) -> str:
        """What a sweep would do with this directory, from its own files and its lock: running, completed,
        diverged, failed, interrupted (a checkpoint to resume) or to do (also a run blocked on another arm)."""
        if self.is_locked():
            return "running"
        status = self.status()
        if status == "failed" and (self.summary() or {}).get("blocked"):  # waited for another arm: retried, as new
            return "to do"
        if status in ("completed", "diverged", "failed"):
            return status
        return "interrupted" if self.checkpoint.exists() else "to do"

    def write_config(self, cfg) -> None:
        atomic_write_text(self.config, OmegaConf.to_yaml(cfg, resolve=True))

    def write_metrics(self, history: list[dict]) -> None:
        import pandas as pd

        atomic_write_text(self.metrics, pd.DataFrame(history).to_csv(index=False))

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.summary_path, summary)
