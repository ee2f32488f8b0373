"""The real entry point, end to end on a tiny slice of Fashion-MNIST, and the files it leaves."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import yaml

from conftest import TINY, run_entry_point


@pytest.mark.e2e
def test_entry_point_writes_run_directory(tmp_path):
    out = tmp_path / "runs"
    proc = run_entry_point([*TINY, f"out_dir={out}", "study=e2e"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = list((out / "e2e").iterdir())

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["model"]["name"] == "resnet20" and cfg["norm"]["name"] == "batch"
    assert cfg["train"]["batch_size"] == 64  # resolved values, not interpolations

    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert list(metrics.epoch) == [1, 2]
    for col in [
        "train_loss",
        "train_err",
        "val_loss_running",
        "val_err_running",
        "val_loss_batch",
        "val_err_batch",
        "lr",
    ]:
        assert col in metrics and metrics[col].map(math.isfinite).all(), col
    assert metrics.train_loss.iloc[-1] < math.log(10)  # learned something beyond chance

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["seed"] == 0
    assert summary["epochs_completed"] == 2 and summary["run_id"] == run_dir.name
    for key in [
        "git_commit",
        "git_dirty",
        "torch",
        "cuda",
        "device",
        "wall_time",
        "final",
        "cpu_model",
        "math_libraries",
    ]:
        assert key in summary, key
    assert summary["threads"] >= 1  # what a bitwise rerun needs besides the commit: CPU model, threads, math libraries
    from bnlab.results.collect import collect

    runs, _ = collect(run_dir.parent)
    assert {"cpu_model", "threads", "math_libraries"} <= set(runs.columns)  # and runs.csv carries them
    assert summary["final"]["val_err_running"] == metrics.val_err_running.iloc[-1]
    assert (run_dir / "checkpoint.pt").stat().st_size > 10_000


@pytest.mark.e2e
def test_completed_run_is_skipped_on_rerun(tmp_path):
    args = [*TINY, "train.epochs=1", f"out_dir={tmp_path / 'runs'}"]
    assert run_entry_point(args, cwd=tmp_path).returncode == 0
    again = run_entry_point(args, cwd=tmp_path)
    assert again.returncode == 0 and "already completed, skipping" in again.stdout
