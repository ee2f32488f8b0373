"""Same config + seed -> identical metrics on CPU; a killed run resumes to the same result."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from bnlab.runner import run
from bnlab.train.run_dir import RunDir
from conftest import TINY, kill_when


def _metrics(summary):
    return pd.read_csv(RunDir(summary["run_dir"]).metrics).drop(columns=["epoch_time"])


@pytest.mark.e2e
def test_same_seed_same_metrics_different_seed_differs(tiny_cfg, tmp_path):
    a = run(tiny_cfg("train.epochs=1", "study=a"))
    b = run(tiny_cfg("train.epochs=1", "study=b"))  # study changes the directory, not the computation
    c = run(tiny_cfg("train.epochs=1", "study=c", "seed=1"))
    pd.testing.assert_frame_equal(_metrics(a), _metrics(b))
    assert not _metrics(a).equals(_metrics(c))


def test_batch_mode_evaluation_leaves_running_stats_untouched(tiny_cfg):
    from bnlab.data import build_data
    from bnlab.models import build_model
    from bnlab.norm import build_norm
    from bnlab.train.evaluate import evaluate
    from bnlab.train.losses import build_loss

    cfg = tiny_cfg()
    data = build_data(cfg)
    model = build_model(cfg.model, build_norm(cfg.norm), data.in_channels, data.num_classes)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    evaluate(model, data.val, build_loss(cfg.loss, 10), "batch")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training  # the caller's mode is restored
    # without the guard the same pass would have moved the running statistics
    model.train()
    with torch.no_grad():
        model(next(iter(data.val))[0])
    assert not all(torch.equal(before[k], model.state_dict()[k]) for k in before)


@pytest.mark.e2e
def test_killed_run_resumes_to_identical_result(tiny_cfg, tmp_path):
    """SIGKILL after the first epoch's checkpoint; rerunning the same command finishes the run exactly."""
    reference = run(tiny_cfg("train.epochs=3", "study=reference"))
    args = [*TINY, "train.epochs=3", "study=killed", f"out_dir={tmp_path / 'runs'}"]
    run_dir = kill_when(args, tmp_path, lambda: list((tmp_path / "runs" / "killed").glob("*/metrics.csv")))
    assert not (run_dir / "summary.json").exists()  # killed mid-run: no summary, checkpoint kept
    resumed = run(tiny_cfg("train.epochs=3", "study=killed"))
    assert resumed["status"] == "completed" and resumed["epochs_completed"] == 3
    pd.testing.assert_frame_equal(_metrics(reference), _metrics(resumed))
