"""SIGTERM (and submitit's preemption signal) to a Sync BN run's ranks started three ways, with real signals to
real processes on CPU ranks (gloo): bnlab's own spawn, `torchrun --nproc_per_node=2`, and submitit's local executor
(the path of Hydra's submitit launchers on SLURM). Each time: every rank stops after rank 0's epoch files are
written, no rank outlives the run lock, nothing says `completed` (nor `failed`), and the run resumes to the same
metrics as an uninterrupted run. A rank-count mismatch under torchrun prints one line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bnlab.runner import run
from bnlab.train.run_dir import RunDir
from conftest import TINY, compose_cfg

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EPOCHS = 3
# 3 epochs of 3 steps of NBS 64 over 2 ranks of 32: a signal sent once epoch 1 is written lands mid-run
SYNC_RUN = [
    *TINY,
    "study=signals",
    "norm.nbs=64",
    "train.processes=2",
    f"train.epochs={EPOCHS}",
    "train.batches_per_epoch=3",
    "data.val_subset=64",
    "eval.modes=[running]",
    "health.enabled=false",
]
ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "bnlab.train"]


def _descendants(root: int) -> list[int]:
    """Every live process under `root` (from /proc: no psutil here)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        children = parents.get(todo.pop(), [])
        out += children
        todo += children
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _run_dir(out_dir: Path) -> RunDir:
    return RunDir.for_config(compose_cfg([*SYNC_RUN, f"out_dir={out_dir}"]))


def _wait_for_first_epoch(rd: RunDir, proc: subprocess.Popen | None = None, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and (proc is None or proc.poll() is None):
        if rd.metrics.exists() and len(pd.read_csv(rd.metrics)) >= 1:
            return
        time.sleep(0.05)
    raise AssertionError(f"no epoch written in {rd.root}")


def _stop_and_watch(root: int, ranks: list[int], rd: RunDir, sig=signal.SIGTERM, to=None, timeout=300) -> list:
    """Send `sig` (to `to`, default the root), then until the root and every rank exited, note each moment a rank
    was alive while the run lock was free (a second trainer could then start on the same directory)."""
    for pid in to or [root]:
        os.kill(pid, sig)
    unlocked_while_alive, deadline = [], time.time() + timeout
    while time.time() < deadline and (_alive(root) or any(_alive(p) for p in ranks)):
        alive = [p for p in ranks if _alive(p)]
        if alive and not rd.is_locked():
            unlocked_while_alive.append(alive)
        time.sleep(0.01)
    assert not any(_alive(p) for p in ranks), "a rank outlived the run"
    return unlocked_while_alive


def _assert_stopped_resumable(rd: RunDir) -> None:
    assert rd.status() is None, rd.summary()  # neither completed nor failed
    assert rd.state() == "interrupted" and not rd.is_locked()
    assert 1 <= len(pd.read_csv(rd.metrics)) < EPOCHS, "the signal should land mid-run"


def _same_metrics(rd: RunDir, reference: RunDir, epochs: int | None = None) -> None:
    """Every epoch's metrics (or the first `epochs`) exactly the uninterrupted reference's."""
    timeless = lambda df: df[[c for c in df.columns if "time" not in c]].head(epochs)
    pd.testing.assert_frame_equal(timeless(pd.read_csv(rd.metrics)), timeless(pd.read_csv(reference.metrics)))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> RunDir:
    """The same run, uninterrupted (bnlab's spawn, in this process)."""
    out = tmp_path_factory.mktemp("reference")
    assert run(compose_cfg([*SYNC_RUN, f"out_dir={out}"]))["status"] == "completed"
    return _run_dir(out)


def test_sigterm_to_spawned_ranks_stops_them_all(tmp_path, reference):
    """`kill <pid>` of `python -m bnlab.train ... train.processes=2`: it passes the signal to both ranks, waits for
    them with the lock held, exits 143; the same command resumes to the uninterrupted run's metrics."""
    rd = _run_dir(tmp_path)
    cmd = [sys.executable, "-m", "bnlab.train", *SYNC_RUN, f"out_dir={tmp_path}"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_first_epoch(rd, proc)
    ranks = [p for p in _descendants(proc.pid) if "spawn_main" in _cmdline(p)]
    assert len(ranks) == 2, [_cmdline(p) for p in _descendants(proc.pid)]
    assert _stop_and_watch(proc.pid, ranks, rd) == []
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated by SIGTERM" in out, out[-3000:]
    _assert_stopped_resumable(rd)

    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and rd.status() == "completed", again.stdout[-3000:] + again.stderr[-3000:]
    _same_metrics(rd, reference)


def test_sigterm_to_torchrun_stops_every_rank(tmp_path, reference):
    """SIGTERM to torchrun (which passes it to its workers): both ranks stop, rank 0 keeps the lock until rank 1
    has exited; torchrun resumes the run."""
    rd = _run_dir(tmp_path)
    cmd = [*TORCHRUN, *SYNC_RUN, f"out_dir={tmp_path}"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_first_epoch(rd, proc)
    ranks = [p for p in _descendants(proc.pid) if "bnlab.train" in _cmdline(p)]
    assert len(ranks) == 2, [_cmdline(p) for p in _descendants(proc.pid)]
    assert _stop_and_watch(proc.pid, ranks, rd) == []
    out, _ = proc.communicate(timeout=60)
    assert out.count("terminated by SIGTERM") == 1, out[-3000:]  # rank 0 says it, once
    _assert_stopped_resumable(rd)

    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and rd.status() == "completed", again.stdout[-3000:] + again.stderr[-3000:]
    _same_metrics(rd, reference)


def test_a_rank_count_mismatch_under_torchrun_is_said_once(tmp_path):
    """torchrun started 2 ranks of a 4-rank run: one line from bnlab (rank 0's), each rank exits 2, nothing
    written. (torchrun itself then reports its failed workers and exits 1: its report, not bnlab's.)"""
    cmd = [*TORCHRUN, *TINY, "norm.nbs=64", "train.processes=4", f"out_dir={tmp_path}"]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    ours = [line for line in (done.stdout + done.stderr).splitlines() if "train.processes" in line]
    assert len(ours) == 1 and "is 4, but torchrun started 2 ranks" in ours[0], done.stdout + done.stderr
    assert re.search(r"exitcode\s*:\s*2\b", done.stderr), done.stderr  # torchrun's report: the ranks exited 2
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def submitit_reference(tmp_path_factory) -> RunDir:
    """The same run, uninterrupted, as submitit's two tasks: its ranks are not bitwise bnlab's spawned ones (the
    first epoch's loss differs by ~1e-5, float order), so a submitit run is compared with a submitit run."""
    out = tmp_path_factory.mktemp("submitit_reference")
    assert _submit(out).results()[0]["status"] == "completed"
    return _run_dir(out)


def _submitit_tasks(job) -> list[int]:
    deadline = time.time() + 60
    while time.time() < deadline:
        tasks = [p for p in _descendants(job._process.pid) if "submitit.core._submit" in _cmdline(p)]
        if len(tasks) == 2:
            return tasks
        time.sleep(0.1)
    raise AssertionError("submitit did not start 2 tasks")


def _submit(tmp_path: Path):
    submitit = pytest.importorskip("submitit")
    executor = submitit.LocalExecutor(folder=tmp_path / "submitit_logs")
    # 60 minutes: a signal now is a preemption (submitit requeues it), not a timeout of a job it cannot checkpoint
    executor.update_parameters(tasks_per_node=2, timeout_min=60)
    return executor.submit(run, compose_cfg([*SYNC_RUN, f"out_dir={tmp_path}"]))


def test_submitit_preemption_requeues_and_the_run_resumes(tmp_path, submitit_reference):
    """submitit's preemption signal (USR2, as SLURM sends it through submitit) to both tasks: the ranks stop after
    rank 0's epoch files, submitit's handler then requeues the job, and the requeued tasks finish the run."""
    rd = _run_dir(tmp_path)
    job = _submit(tmp_path)
    _wait_for_first_epoch(rd)
    tasks = _submitit_tasks(job)
    for pid in tasks:
        os.kill(pid, signal.SIGUSR2)
    results = job.results()  # the requeued attempt's: rank 0's summary
    assert results[0]["status"] == "completed", results
    logs = "".join(f.read_text() for f in (tmp_path / "submitit_logs").glob("*_log.*"))
    assert "Requeued job" in logs and "resuming" in logs, logs[-3000:]
    _same_metrics(rd, submitit_reference)


def test_sigterm_to_submitit_tasks_stops_every_rank(tmp_path, submitit_reference):
    """SIGTERM to the job (submitit forwards it to its tasks; submitit's own handler only logs it): both ranks stop
    with the lock held to the end, the job has no result, and the run resumes (here by bnlab's spawn)."""
    rd = _run_dir(tmp_path)
    job = _submit(tmp_path)
    _wait_for_first_epoch(rd)
    tasks = _submitit_tasks(job)
    assert _stop_and_watch(job._process.pid, tasks, rd) == []
    with pytest.raises(Exception):  # noqa: B017 - submitit's own error for a job that ended without a result
        job.results()
    _assert_stopped_resumable(rd)
    logs = "".join(f.read_text() for f in (tmp_path / "submitit_logs").glob("*_log.*"))
    assert "Bypassing signal SIGTERM" in logs  # submitit's handler was called, not replaced
    done = len(pd.read_csv(rd.metrics))
    _same_metrics(rd, submitit_reference, epochs=done)  # the epochs before the signal: submitit's own

    # resumed here by bnlab's spawn, whose float order is not submitit's: the run completes its remaining epochs
    assert run(compose_cfg([*SYNC_RUN, f"out_dir={tmp_path}"]))["status"] == "completed"
    assert len(pd.read_csv(rd.metrics)) == EPOCHS
