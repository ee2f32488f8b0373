"""Slow: each study's CPU preset, shrunk to a tiny size, end to end through sweep -> collect -> figures."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bnlab.cli import main as cli_main
from test_studies import STUDIES, compose_point, sweep_grid


def tiny_overrides(study: str) -> list[str]:
    cfg = compose_point(study, "cpu", sweep_grid(study, "cpu")[0])
    eval_bs = int(cfg.eval.get("batch_size") or cfg.train.batch_size)
    if cfg.data.name == "glyphs":  # shrink by classes: a random subset would leave labels without a pair; 32 classes:
        # the mate-swap probe needs 32 labels, and their 320 validation images split into NBS 32 groups
        shrink = ["data.num_classes=32", "data.train_subset=null", "data.val_subset=null"]
    else:
        shrink = ["data.train_subset=1024", f"data.val_subset={2 * eval_bs}"]
    if "hessian" in cfg:  # the Hessian study's analysis settings: a few eigenvalues over one batch
        shrink += ["hessian.top_k=3", "hessian.projected_top_k=2", "hessian.batches=1", "hessian.precise_samples=256"]
    return [
        *shrink,
        "train.epochs=2",
        "train.batches_per_epoch=2",
        "logger=none",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("study", STUDIES)
def test_study_cpu_preset_end_to_end(study, tmp_path):
    runs = tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "bnlab.train",
        "-m",
        f"experiment={study}",
        "scale=cpu",
        f"out_dir={runs}",
        *tiny_overrides(study),
    ]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep summary" in proc.stdout and "failed" not in proc.stdout.split("sweep summary")[-1]
    out = tmp_path / "results"
    # shrunk runs lie outside the study's grid: --all collects them (one variant, analysed into `out`)
    cli_main(["collect", study, "--runs", str(runs), "--out", str(out), "--all"])
    cli_main(["figures", study, "--out", str(out)])
    pngs, tables = list(out.glob("*.png")), [p for p in out.glob("*.md")]
    assert pngs and tables, sorted(p.name for p in out.iterdir())
    assert all(p.stat().st_size > 5000 for p in pngs)
    assert len(list(out.glob("*.pdf"))) == len(pngs)
