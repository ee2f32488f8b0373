"""Sweeps: launchers end to end, collect on messy directories, kill-and-resume, figures from fixtures."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bnlab.results.analysis import default_analysis
from bnlab.results.collect import collect, load, save, varying_keys
from bnlab.runner import run
from conftest import TINY

SWEEP_ARGS = [*TINY, "train.epochs=1", "data.train_subset=256", "data.val_subset=128"]


def multirun(tmp_path: Path, *args: str, **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    cmd = [sys.executable, "-m", "bnlab.train", "-m", *SWEEP_ARGS, f"out_dir={tmp_path / 'runs'}", *args]
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    if popen:
        return subprocess.Popen(cmd, cwd=tmp_path, env=env, **popen)
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def completed_configs(study_dir: Path) -> list[tuple]:
    runs, _ = collect(study_dir)
    done = runs[runs.status == "completed"]
    return sorted(zip(done["seed"], done["norm.name"]))


@pytest.mark.e2e
@pytest.mark.parametrize("launcher", ["basic", "joblib", "submitit_local"])
def test_tiny_multirun_through_each_launcher(tmp_path, launcher):
    extra = {
        "basic": [],
        "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"],
    }[launcher]
    proc = multirun(tmp_path, "study=launch", "seed=0,1", *extra)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert completed_configs(tmp_path / "runs" / "launch") == [(0, "batch"), (1, "batch")]
    if launcher != "submitit_local":  # submitit jobs print into their own log files
        assert "sweep summary" in proc.stdout and "2 completed" in proc.stdout


@pytest.mark.e2e
def test_killed_sweep_resumes_without_loss_or_duplicates(tmp_path):
    """SIGKILL a 4-run sweep after its first run finished; relaunching completes the rest and retrains nothing."""
    args = ["study=kill", "seed=0,1", "norm=batch,group", "train.epochs=2"]
    study = tmp_path / "runs" / "kill"
    proc = multirun(tmp_path, *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 400
    summaries = lambda: sorted(study.glob("*/summary.json"))
    while len(summaries()) < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p: (p.stat().st_mtime_ns, p.read_text()) for p in summaries()}
    assert 1 <= len(finished) < 4, "the kill should land mid-sweep"

    again = multirun(tmp_path, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("already completed, skipping") == len(finished)
    for p, (mtime, text) in finished.items():  # finished runs were not retrained or rewritten
        assert p.stat().st_mtime_ns == mtime and p.read_text() == text
    runs, epochs = collect(study)
    assert len(runs) == 4 and (runs.status == "completed").all()
    assert completed_configs(study) == [(0, "batch"), (0, "group"), (1, "batch"), (1, "group")]
    assert epochs.groupby("run_id").epoch.apply(list).map(lambda e: e == [1, 2]).all()  # no duplicated epochs


def _fake_sibling(src: Path, name: str, seed: int) -> Path:
    """A copy of a real run directory with another seed in its config (so another run id: collect counts a copied
    folder of the same config once), to turn into a failed or half-written run."""
    dst = src.parent / name
    dst.mkdir()
    for f in ("metrics.csv", "checkpoint.pt"):
        (dst / f).write_bytes((src / f).read_bytes())
    (dst / "config.yaml").write_text(re.sub(r"(?m)^seed: .*$", f"seed: {seed}", (src / "config.yaml").read_text()))
    return dst


@pytest.mark.e2e
def test_collect_tolerates_completed_diverged_failed_and_half_written_runs(tiny_cfg):
    ok = run(tiny_cfg("study=mixed", "train.epochs=1"))
    diverged = run(tiny_cfg("study=mixed", "train.epochs=1", "optim.lr=1e12", "optim.nesterov=false"))
    assert diverged["status"] == "diverged"
    ok_dir = Path(ok["run_dir"])
    failed = _fake_sibling(ok_dir, "failed0000001", seed=101)
    (failed / "summary.json").write_text(json.dumps({"status": "failed", "reason": "RuntimeError: boom"}))
    _fake_sibling(ok_dir, "halfwritten01", seed=102)  # killed mid-run: checkpoint and metrics, no summary
    garbage = _fake_sibling(ok_dir, "garbage000001", seed=103)
    (garbage / "metrics.csv").write_bytes(b"\x00\x01not,a\ncsv\x00\x00\x00,,,\n\x00")
    (garbage / "summary.json").write_text("{ truncated")

    runs, epochs = collect(ok_dir.parent)
    by_folder = runs.assign(folder=runs.run_dir.map(lambda d: Path(d).name)).set_index("folder")
    status = by_folder["status"].to_dict()
    assert len(runs) == 5  # five folders, five configs: five runs
    assert status[ok_dir.name] == "completed" and status[Path(diverged["run_dir"]).name] == "diverged"
    assert status["failed0000001"] == "failed" and status["halfwritten01"] == "interrupted"
    assert by_folder.loc["halfwritten01", "epochs_completed"] == 1
    assert "summary.json unreadable" in by_folder.loc["garbage000001", "problem"]
    assert {"optim.lr", "norm.name", "git_commit", "wall_time", "val_err_running"} <= set(runs.columns)
    assert varying_keys(runs) == ["optim.lr", "optim.nesterov"]

    save(runs, epochs, ok_dir.parent / "_collected")
    runs2, epochs2 = load(ok_dir.parent / "_collected")
    assert len(runs2) == len(runs) and len(epochs2) == len(epochs)


def _fixture_results(tmp_path: Path, shift: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs, epochs = [], []
    for arm in ("batch", "group"):
        for seed in range(3):
            rid = f"{arm}{seed}"
            err = 0.1 + 0.05 * (arm == "group") + 0.01 * seed + shift
            runs.append(
                {
                    "run_id": rid,
                    "status": "completed",
                    "seed": seed,
                    "norm.name": arm,
                    "train_err": err / 2,
                    "val_err_running": err,
                    "val_err_batch": err * 0.9,
                }
            )
            epochs += [
                {"run_id": rid, "epoch": e, "val_err_running": err * (3 - e), "val_err_batch": err} for e in (1, 2)
            ]
    return pd.DataFrame(runs), pd.DataFrame(epochs)


def test_figures_build_from_fixture_and_change_with_data(tmp_path):
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    paths_a = default_analysis(*_fixture_results(tmp_path, 0.0), out_a)
    default_analysis(*_fixture_results(tmp_path, 0.2), out_b)
    names = sorted(p.name for p in paths_a)
    assert names == ["curves.pdf", "curves.png", "table.csv", "table.md", "table.tex"]
    for name in names:
        a, b = (out_a / name).read_bytes(), (out_b / name).read_bytes()
        assert len(a) > 100 and len(b) > 100
        assert a != b, name  # every output follows the data (PDFs carry no timestamp)
    table = pd.read_csv(out_a / "table.csv")
    assert list(table["norm.name"]) == ["batch", "group"] and (table["n"] == 3).all()
    assert table.loc[0, "val_err_running"] == "11.0 ± 1.0"


def test_run_being_trained_elsewhere_is_skipped_not_duplicated(tiny_cfg):
    from bnlab.train.run_dir import RunDir

    cfg = tiny_cfg("train.epochs=1", "study=locked")
    rd = RunDir.for_config(cfg)
    with rd.locked() as owned:  # another sweep holds this run
        assert owned
        assert run(cfg)["status"] == "running elsewhere"
        assert not rd.summary_path.exists() and not rd.metrics.exists()
    assert run(cfg)["status"] == "completed"  # released (as on SIGKILL: the kernel drops the flock)


def test_report_embeds_every_study_table_and_figure(tmp_path):
    from bnlab.results.report import build_report

    out = tmp_path / "results" / "toy" / "cpu"
    default_analysis(*_fixture_results(tmp_path, 0.0), out)
    page = build_report(tmp_path / "results", tmp_path / "report.html").read_text()
    assert "toy/cpu" in page and "<table" in page and "11.0 ± 1.0" in page
    assert page.count("data:image/png;base64,") == 1  # self-contained: the figure is inline, no file links
    assert 'src="curves' not in page


def test_neutral_default_keeps_run_hash(monkeypatch):
    """A key added later at its neutral value leaves old run ids alone; any other value changes the id."""
    from omegaconf import OmegaConf

    from bnlab.train import run_dir

    base = OmegaConf.create({"study": "s", "seed": 0, "train": {"epochs": 1}})
    before = run_dir.run_id(base)
    monkeypatch.setitem(run_dir.NEUTRAL_DEFAULTS, "train.new_switch", False)
    assert run_dir.run_id(OmegaConf.merge(base, {"train": {"new_switch": False}})) == before
    assert run_dir.run_id(OmegaConf.merge(base, {"train": {"new_switch": True}})) != before
