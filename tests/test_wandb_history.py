"""W&B ends with the whole history of a run, whatever killed its attempts; runs are named by arm and swept values;
the same config trained in another run directory (another machine) is another W&B run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from bnlab.train.wandb_logger import WandbLogger, run_labels, wandb_identity
from wandb_records import history

TINY_RUN = [
    "data=synthetic",
    "data.n_train=1024",
    "data.n_test=128",
    "model.width=0.25",
    "train.epochs=3",
    "train.batch_size=64",
    "train.progress=false",
    "health.enabled=false",
]


class FakeRun:
    def __init__(self, step: int = 0):
        self.step, self.logged, self.summary, self.exit_code = step, [], {}, None

    def log(self, row, step):
        self.logged.append((step, row))

    def finish(self, exit_code=0):
        self.exit_code = exit_code


@pytest.fixture
def fake_wandb(monkeypatch):
    """A stand-in `wandb` module recording init's arguments; its run resumes at `server_step`."""
    calls = {"server_step": 0}

    def init(**kw):
        calls["init"] = kw
        calls["run"] = FakeRun(calls["server_step"])
        return calls["run"]

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init, Settings=lambda **kw: kw))
    return calls


def _cfg(**extra):
    base = {"study": "nbs", "seed": 1, "arm": None, "norm": {"nbs": 8}, "optim": {"lr": 0.2}}
    base["logger"] = {"mode": "offline", "project": "bnlab", "tags": []}
    return OmegaConf.create({**base, **extra})


def test_labels_are_the_swept_keys_not_the_plumbing():
    overrides = ["experiment=nbs", "scale=cpu", "out_dir=/somewhere/runs", "hydra/launcher=joblib", "norm.nbs=8"]
    overrides += ["seed=1", "optim.lr=0.05", "logger.mode=online", "train.retry_failed=true"]
    labels = run_labels(_cfg(), overrides, swept=["norm.nbs", "seed"])
    assert labels["tags"] == ["norm.nbs=8", "seed=1"]  # not out_dir=..., not every override
    assert labels["job_type"] == "norm.nbs=8" and labels["name"] == "norm.nbs=8 seed=1"
    arm = run_labels(_cfg(arm="finetune_frozen"), ["arm/ten_ways=finetune_frozen", "seed=0"], ["arm/ten_ways", "seed"])
    assert arm["job_type"] == "finetune_frozen" and arm["name"] == "finetune_frozen seed=1"
    single = run_labels(_cfg(), ["optim.lr=0.05", "out_dir=x"])  # a single run: what the user chose
    assert single["tags"] == ["optim.lr=0.05"] and single["job_type"] == "run"


def test_command_line_sweeps_are_the_swept_keys():
    from bnlab.sweep import command_line_sweeps

    assert command_line_sweeps(["norm.nbs=4,32,256", "seed=range(2)", "out_dir=x", "optim.lr=0.05"]) == [
        "norm.nbs",
        "seed",
    ]


def test_wandb_id_is_per_run_directory_and_kept(tmp_path):
    """Same config, two run directories (two machines): two W&B runs; the same directory: always the same one."""
    a, b = tmp_path / "machine_a", tmp_path / "machine_b"
    a.mkdir(), b.mkdir()
    id_a, id_b = wandb_identity(_cfg(), a)["id"], wandb_identity(_cfg(), b)["id"]
    assert id_a != id_b and id_a.rsplit("-", 1)[0] == id_b.rsplit("-", 1)[0]  # same study-hash, another nonce
    assert wandb_identity(_cfg(), a)["id"] == id_a  # a resume in the same directory continues the same W&B run


def test_resume_replays_the_epochs_the_wandb_run_lacks(fake_wandb, tmp_path):
    rows = [{"epoch": e, "step": 10 * e, "train_loss": 1.0 / e, "val_err_batch": float("nan")} for e in (1, 2, 3)]
    logger = WandbLogger(_cfg(), tmp_path, history=rows, mode="offline")  # offline: the new folder gets all of them
    assert [s for s, _ in fake_wandb["run"].logged] == [10, 20, 30]
    assert "val_err_batch" not in fake_wandb["run"].logged[0][1]  # NaN cells (absent metrics) are not logged
    assert fake_wandb["init"]["resume"] == "allow" and fake_wandb["init"]["id"].startswith("nbs-")
    logger.finish()
    fake_wandb["server_step"] = 21  # online, the killed attempt uploaded epochs 1-2: only epoch 3 is missing
    WandbLogger(_cfg(), tmp_path, history=rows, mode="online")
    assert [s for s, _ in fake_wandb["run"].logged] == [30]


def test_sync_rebuilds_a_run_from_metrics_csv(tiny_cfg, tmp_path, monkeypatch, fake_wandb):
    """`bnlab sync <study>`: a run trained without W&B gets a W&B run with every epoch and its final status."""
    from bnlab.cli import main
    from bnlab.runner import run

    small = ["data=synthetic", "data.n_train=256", "data.n_test=128", "data.train_subset=null", "data.val_subset=null"]
    summary = run(tiny_cfg("study=syncme", "train.epochs=2", "model.width=0.25", *small))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    main(["sync", "syncme", "--runs", str(tmp_path / "runs")])
    fake = fake_wandb["run"]
    assert [row["epoch"] for _, row in fake.logged] == [1, 2]
    assert fake.summary["status"] == "completed" and fake.exit_code == 0
    assert fake_wandb["init"]["mode"] == "offline"  # logger=none at training: sync writes an offline run
    assert (Path(summary["run_dir"]) / "wandb.json").exists()


def _train(tmp_path: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "bnlab.train", *TINY_RUN, f"out_dir={tmp_path / 'runs'}"]
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_killed_attempt_loses_no_wandb_history(tmp_path, sig):
    """Kill a real offline run after its first epoch (kill -9, or SIGTERM as SLURM sends), rerun it: the run
    directory ends with one offline W&B folder holding every epoch once, as metrics.csv does."""
    proc = _train(tmp_path)
    deadline = time.time() + 300
    checkpoint = lambda: list((tmp_path / "runs" / "default").glob("*/checkpoint.pt"))  # written after epoch 1
    while not checkpoint() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, sig)
    out, _ = proc.communicate(timeout=120)
    run_dir = checkpoint()[0].parent
    assert not (run_dir / "summary.json").exists(), "the kill should land mid-run"
    if sig == signal.SIGTERM:
        assert proc.returncode == 143 and "terminated by SIGTERM" in out, out[-2000:]
        first = list(run_dir.glob("wandb/offline-run-*/*.wandb"))
        assert [r["epoch"] for r in history(first[0])] == list(range(1, len(pd.read_csv(run_dir / "metrics.csv")) + 1))
    else:
        assert proc.returncode == -signal.SIGKILL

    again = _train(tmp_path)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0 and "resuming" in out, out[-2000:]
    folders = list(run_dir.glob("wandb/offline-run-*"))
    assert len(folders) == 1, folders  # one run id, one offline folder
    rows = history(next(folders[0].glob("*.wandb")))
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    metrics_csv = pd.read_csv(run_dir / "metrics.csv")
    assert [r["train_loss"] for r in rows] == pytest.approx(list(metrics_csv["train_loss"]), rel=1e-12)
