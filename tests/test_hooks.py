"""`fit` runs whatever hooks it is handed (the BN health monitor is one), and the checkpoint keeps their states."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bnlab.runner import run
from bnlab.train.build import build
from bnlab.train.checkpoint import Progress, load_checkpoint, resume
from bnlab.train.hooks import Hook
from bnlab.train.loop import fit
from bnlab.train.run_dir import RunDir


class Counter(Hook):
    name = "counter"
    every_n_batches = 3

    def __init__(self):
        self.batches, self.evals = 0, 0

    def on_batch(self, model) -> dict:
        self.batches += 1
        return {"counter/batches": self.batches}

    def on_eval(self, model, data, row: dict, epoch: int) -> dict:
        assert "val_loss_running" in row  # after validation
        self.evals += 1
        return {"counter/epoch": epoch}

    def state_dict(self) -> dict:
        return {"batches": self.batches, "evals": self.evals}

    def load_state_dict(self, state: dict) -> None:
        self.batches, self.evals = state["batches"], state["evals"]


class Logged:
    def __init__(self):
        self.calls = []

    def log(self, metrics: dict, step: int) -> None:
        self.calls.append((step, metrics))


def test_fit_runs_a_hook_it_does_not_know_and_checkpoints_its_state(tiny_cfg):
    cfg = tiny_cfg("train.epochs=1", "health.enabled=false")  # 512 images in batches of 64: 8 batches
    rd, job = RunDir.for_config(cfg), build(cfg)
    rd.root.mkdir(parents=True)
    hook, logger, progress = Counter(), Logged(), Progress()
    fit(cfg, job, rd, progress, logger, [hook])
    assert progress.history[0]["counter/epoch"] == 1 and hook.evals == 1
    assert [step for step, _ in logger.calls[:2]] == [3, 6]  # every 3rd batch, at its step
    assert load_checkpoint(rd.checkpoint)["hooks"] == {"counter": {"batches": 2, "evals": 1}}
    again = Counter()
    assert resume(cfg, rd, build(cfg), [again]).epoch == 1 and (again.batches, again.evals) == (2, 1)


def test_a_checkpoint_from_before_hooks_resumes_its_health_events(tiny_cfg):
    """Checkpoints written before fit took hooks kept the monitor's events under `health_events`."""
    cfg = tiny_cfg("train.epochs=1", "health.gap_threshold=-100", "health.discrepancy_threshold=-1")
    first = run(cfg)
    rd = RunDir(Path(first["run_dir"]))
    assert first["events"] and first["events"][0]["event"] == "stale_ema"
    state = torch.load(rd.checkpoint, weights_only=False)
    state["health_events"] = state.pop("hooks")["health"]["events"]
    torch.save(state, rd.checkpoint)
    rd.summary_path.unlink()  # as if killed after the last epoch's checkpoint
    resumed = run(cfg)
    assert resumed["status"] == "completed" and resumed["epochs_completed"] == 1
    assert resumed["events"] == first["events"]
    assert json.loads(rd.summary_path.read_text())["health"] == first["health"]
