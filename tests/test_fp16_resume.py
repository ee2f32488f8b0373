"""fp16 autocast's GradScaler is part of a run's state: a killed fp16 run resumes to the uninterrupted result.

The loss scale moves during training (halved at every overflow, doubled after `growth_interval` clean steps), and
a step whose gradients overflowed is skipped; a resume that restarted the scale at its initial value would skip
other steps than the uninterrupted run. Runs on CPU (float16 autocast and a CPU GradScaler, torch >= 2.4).
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from bnlab.runner import run
from bnlab.train.run_dir import RunDir
from conftest import TINY, kill_when

# a small MLP: fp16 matrix products are fast enough on CPU, fp16 convolutions are not
FP16 = ["data=synthetic", "data.n_train=256", "data.n_test=64", "data.image_size=8", "model=mlp_deep",
        "model.depth=4", "model.width=32", "train.batch_size=32", "train.autocast=fp16", "train.epochs=3",
        "health.enabled=false"]  # fmt: skip


def _metrics(summary):
    return pd.read_csv(RunDir(summary["run_dir"]).metrics).drop(columns=["epoch_time"])


def _scaler(summary) -> dict:
    return torch.load(RunDir(summary["run_dir"]).checkpoint, weights_only=False)["scaler"]


@pytest.mark.e2e
def test_killed_fp16_run_resumes_to_the_uninterrupted_result(tiny_cfg, tmp_path):
    reference = run(tiny_cfg(*FP16, "study=reference"))
    assert _scaler(reference)["_growth_tracker"] == 24  # 24 clean steps toward the next doubling: state to keep
    args = [*TINY, *FP16, "study=killed", f"out_dir={tmp_path / 'runs'}"]
    run_dir = kill_when(args, tmp_path, lambda: list((tmp_path / "runs" / "killed").glob("*/checkpoint.pt")))
    assert not (run_dir / "summary.json").exists()  # killed mid-run
    resumed = run(tiny_cfg(*FP16, "study=killed"))
    assert resumed["status"] == "completed" and resumed["epochs_completed"] == 3
    pd.testing.assert_frame_equal(_metrics(reference), _metrics(resumed))
    assert _scaler(reference) == _scaler(resumed)
