"""A sweep's errors read like a single run's (issue 26), sweeps are checked and planned before anything trains, and
what a sweep leaves on disk tells running from interrupted runs (issue 22)."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bnlab.cli import main as cli_main
from bnlab.config_errors import ConfigError
from bnlab.plan import run_state
from bnlab.runner import run
from bnlab.sweep import run_statuses
from bnlab.train.run_dir import RunDir
from conftest import TINY, compose_cfg

SWEEP = [*TINY, "train.epochs=1", "data.train_subset=256", "data.val_subset=128", "model.width=0.25"]
LAUNCHERS = {
    "basic": [],
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"],
}


def _entry(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "bnlab.train", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.e2e
@pytest.mark.parametrize(  # joblib and submitit start worker processes: slow (the fast suite keeps basic)
    "launcher",
    ["basic", pytest.param("joblib", marks=pytest.mark.slow), pytest.param("submitit_local", marks=pytest.mark.slow)],
)
def test_job_error_reads_like_a_single_run_under_each_launcher(tmp_path, launcher):
    """An error only a job can find (its fine-tuning source is missing) arrives as the single run's one line and
    exit code, not as loky's BrokenProcessPool or a submitit traceback."""
    bad = ["finetune.from=/nowhere/run", f"out_dir={tmp_path / 'runs'}"]
    single = _entry(tmp_path, *SWEEP, *bad)
    sweep = _entry(tmp_path, "-m", *SWEEP, *bad, "seed=0,1", *LAUNCHERS[launcher])
    line = "error: config key 'finetune.from': '/nowhere/run': no checkpoint at /nowhere/run"
    assert single.returncode == 2 and line in single.stderr, single.stderr[-3000:]
    assert sweep.returncode == single.returncode, sweep.stdout[-2000:] + sweep.stderr[-3000:]
    assert line in sweep.stderr.splitlines()
    assert "Traceback" not in sweep.stderr and "BrokenProcessPool" not in sweep.stderr


@pytest.mark.slow
def test_issue_26_reproduction_fails_up_front(tmp_path):
    proc = _entry(
        tmp_path, "-m", "experiment=forum_instability", "scale=cpu", "schedule=constant", "seed=0",
        "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"out_dir={tmp_path / 'runs'}",
    )  # fmt: skip
    assert proc.returncode == 2
    assert "error: config key 'schedule.factor': not an option of schedule 'constant'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "runs" / "forum_instability").exists()


@pytest.mark.e2e
def test_plan_lists_jobs_states_and_run_dirs_without_training(tmp_path, capsys):
    out = tmp_path / "runs"
    args = [*SWEEP, f"out_dir={out}", "study=plan", "norm=batch,group"]
    done = compose_cfg([*SWEEP, "study=plan", "norm=batch"], tmp_path)
    run(done)  # the first job has been trained already
    with RunDir.for_config(compose_cfg([*SWEEP, "study=plan", "norm=group"], tmp_path)).locked():
        cli_main(["plan", *args])  # the second is being trained by "another process"
    text = capsys.readouterr().out
    assert "2 jobs: 1 completed, 1 running" in text
    assert str(RunDir.for_config(done).root) in text and "[norm=batch]" in text
    assert sorted(p.name for p in (out / "plan").iterdir()) == sorted(
        [RunDir.for_config(done).root.name, RunDir.for_config(compose_cfg([*SWEEP, "study=plan", "norm=group"],
                                                                          tmp_path)).root.name]
    )  # fmt: skip

    with pytest.raises(SystemExit) as exit_:
        cli_main(["plan", *SWEEP, f"out_dir={out}", "study=plan2", "norm.nbs=8,3"])
    assert exit_.value.code == 2
    text = capsys.readouterr().out
    assert "INVALID" in text and "config key 'norm.nbs': nbs=3" in text and not (out / "plan2").exists()


def test_status_shows_a_run_training_now_as_running(tiny_cfg):
    cfg = tiny_cfg("train.epochs=1")
    rd = RunDir.for_config(cfg)
    with rd.locked() as owned:
        assert owned
        rd.write_config(cfg)
        rd.checkpoint.write_bytes(b"")  # mid-training: a checkpoint, no summary
        assert [s for _, s, _ in run_statuses(rd.root.parent)] == ["running"]
    assert [s for _, s, _ in run_statuses(rd.root.parent)] == ["interrupted"]


def test_written_files_follow_the_umask(tiny_cfg):
    old = os.umask(0o002)
    try:
        summary = run(tiny_cfg("train.epochs=1"))
    finally:
        os.umask(old)
    rd = RunDir(Path(summary["run_dir"]))
    for path in (rd.config, rd.metrics, rd.summary_path, rd.checkpoint):
        assert stat.S_IMODE(path.stat().st_mode) == 0o664, path


def test_full_disk_reports_the_first_error_not_the_second(tiny_cfg, monkeypatch, capsys):
    import bnlab.runner as runner
    import bnlab.train.loop as loop
    from bnlab.train.__main__ import report

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "checkpoint.pt")

    monkeypatch.setattr(loop, "save", no_space)
    monkeypatch.setattr(runner, "atomic_write_text", no_space)  # error.txt cannot be written either
    with pytest.raises(OSError) as err:
        run(tiny_cfg("train.epochs=1"))
    assert err.value.errno == errno.ENOSPC and err.value.__context__ is None  # not hidden under a second ENOSPC
    assert "could not record this run's failed outcome" in capsys.readouterr().err
    assert report(err.value) == 1
    assert capsys.readouterr().err.strip() == "error: cannot write checkpoint.pt: No space left on device"


@pytest.mark.e2e
def test_finetune_arm_without_its_source_is_recorded_and_retried(tmp_path):
    cfg = compose_cfg([*SWEEP, "experiment=ten_ways", "arm/ten_ways=finetune_frozen"], tmp_path)
    with pytest.raises(ConfigError, match="finetune.from.*no completed run of arm 'bn'"):
        run(cfg)
    [(rd, status, reason)] = run_statuses(tmp_path / "runs" / "ten_ways")
    assert status == "failed" and "no completed run of arm 'bn'" in reason  # `bnlab status` shows it
    with pytest.raises(ConfigError):  # tried again (nothing was trained), not skipped as "already failed"
        run(cfg)
    assert run_state(rd.root) == "to do"  # what `bnlab plan` shows for it


@pytest.mark.slow
def test_finetune_arms_wait_for_their_source_under_joblib(tmp_path):
    proc = _entry(
        tmp_path, "-m", "experiment=ten_ways", "arm/ten_ways=bn,finetune_frozen", "seed=0", *SWEEP,
        "train.batch_size=16", "eval.batch_size=16", f"out_dir={tmp_path / 'runs'}", "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    statuses = [s for _, s, _ in run_statuses(tmp_path / "runs" / "ten_ways")]
    assert statuses == ["completed", "completed"]


def test_a_status_probe_never_makes_a_starting_run_skip_itself(tmp_path):
    """is_locked takes the lock shared for an instant; a run taking it at that instant retries instead of
    concluding that another process trains it."""
    import fcntl
    import threading

    rd = RunDir(tmp_path / "run")
    rd.root.mkdir()
    (rd.root / ".lock").touch()
    fd = os.open(rd.root / ".lock", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)  # a probe in progress
    threading.Timer(0.15, lambda: os.close(fd)).start()
    with rd.locked() as owned:
        assert owned
        assert rd.is_locked()
    assert not rd.is_locked()
