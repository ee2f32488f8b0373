"""fp16 autocast's GradScaler is part of a run's state: a killed fp16 run resumes to the uninterrupted result.

The loss scale moves during training (halved at every overflow, doubled after `growth_interval` clean steps), and
a step whose gradients overflowed is skipped; a resume that restarted the scale at its initial value would skip
other steps than the uninterrupted run. Runs on CPU (float16 autocast and a CPU GradScaler, torch >= 2.4).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from bnlab.runner import run
from bnlab.train.run_dir import RunDir
from conftest import TINY

FP16 = ["train.autocast=fp16", "train.epochs=3", "optim.lr=0.5"]


def _metrics(summary):
    return pd.read_csv(RunDir(summary["run_dir"]).metrics).drop(columns=["epoch_time"])


def _scaler(summary) -> dict:
    return torch.load(RunDir(summary["run_dir"]).checkpoint, weights_only=False)["scaler"]


@pytest.mark.e2e
def test_killed_fp16_run_resumes_to_the_uninterrupted_result(tiny_cfg, tmp_path):
    reference = run(tiny_cfg(*FP16, "study=reference"))
    assert _scaler(reference)["scale"] < 2.0**16  # overflows halved the initial scale: there is state to keep
    args = [*TINY, *FP16, "study=killed", f"out_dir={tmp_path / 'runs'}"]
    proc = subprocess.Popen([sys.executable, "-m", "bnlab.train", *args], cwd=tmp_path, stdout=subprocess.DEVNULL)
    checkpoints = lambda: list((tmp_path / "runs" / "killed").glob("*/checkpoint.pt"))
    deadline = time.time() + 240
    while not checkpoints() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = checkpoints()[0].parent
    assert not (run_dir / "summary.json").exists()  # killed mid-run
    resumed = run(tiny_cfg(*FP16, "study=killed"))
    assert resumed["status"] == "completed" and resumed["epochs_completed"] == 3
    pd.testing.assert_frame_equal(_metrics(reference), _metrics(resumed))
    assert _scaler(reference) == _scaler(resumed)
