"""scripts/rerun_bitwise.py: a run made at HEAD, collected like a committed one, reruns bitwise from its recorded
commit, threads and CPU capability; a changed committed metric is reported."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pandas as pd
import pytest

from bnlab import REPO_ROOT
from bnlab.results.collect import collect_study, save

TINY_LR_STRESS = [
    "experiment=lr_stress",
    "scale=cpu",
    "arm/lr_stress=bn",
    "seed=0",
    "train.epochs=2",
    "train.batches_per_epoch=2",
    "data.train_subset=512",
    "data.val_subset=128",
]


def _script():
    spec = importlib.util.spec_from_file_location("rerun_bitwise", REPO_ROOT / "scripts" / "rerun_bitwise.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def committed_run(tmp_path_factory):
    """A tiny lr_stress run trained from a worktree of HEAD (its recorded commit) at 1 thread and AVX2, collected
    with --all into runs.csv / epochs.csv as a committed results folder would hold it."""
    tmp = tmp_path_factory.mktemp("rerun")
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode:
        pytest.fail("the bitwise rerun test needs the git repository (not a tarball)")
    worktree = tmp / "head"
    subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", str(worktree), "HEAD"], check=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "avx2"}
    env.update(WANDB_MODE="disabled", PYTHONPATH=str(worktree / "src"))
    try:
        subprocess.run(
            [sys.executable, "-m", "bnlab.train", *TINY_LR_STRESS, f"out_dir={tmp / 'runs'}"],
            cwd=worktree,
            env=env,
            check=True,
            capture_output=True,
            timeout=600,
        )
    finally:
        subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force", str(worktree)], check=True)
    collected = collect_study(tmp / "runs", "lr_stress", "cpu", include_all=True)
    results = tmp / "results"
    save(collected.runs, collected.epochs, results)
    return results, str(collected.runs["run_id"].iloc[0])


def test_a_run_reruns_bitwise_from_its_recorded_commit(committed_run, capsys):
    results, run_id = committed_run
    row = pd.read_csv(results / "runs.csv").iloc[0]
    assert row["aten_cpu_capability"] == "avx2" and int(row["threads"]) == 1  # what the rerun reads
    assert _script().main([str(results), run_id]) == 0
    out = capsys.readouterr().out
    assert "bitwise equal" in out and "ATEN_CPU_CAPABILITY=avx2" in out and "OMP_NUM_THREADS=1" in out


def test_a_changed_metric_is_reported(committed_run, tmp_path, capsys):
    results, run_id = committed_run
    for name in ("runs.csv", "epochs.csv"):
        (tmp_path / name).write_text((results / name).read_text())
    epochs = pd.read_csv(tmp_path / "epochs.csv")
    epochs.loc[0, "train_loss"] = epochs.loc[0, "train_loss"] + 1e-12  # one ulp-scale change is not bitwise
    epochs.to_csv(tmp_path / "epochs.csv", index=False)
    assert _script().main([str(tmp_path), run_id]) == 1
    assert "epochs.csv row 1 train_loss" in capsys.readouterr().out


def test_a_commit_not_in_history_cannot_be_rerun(committed_run, tmp_path, capsys):
    results, run_id = committed_run
    runs = pd.read_csv(results / "runs.csv")
    runs["git_commit"] = "0" * 40
    runs.to_csv(tmp_path / "runs.csv", index=False)
    assert _script().main([str(tmp_path), run_id]) == 2
    assert "not in this repository's history" in capsys.readouterr().err
