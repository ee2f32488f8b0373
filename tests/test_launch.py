"""bnlab.train.launch: one GPU per job on a multi-GPU box (simulated device count), the stop-signal handler's logic
in one process, and errors before training that write nothing. The multi-process SIGTERM tests (spawned ranks,
torchrun, submitit) are in test_launch_signals.py."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import bnlab
from bnlab.config_errors import ConfigError
from bnlab.data.errors import DatasetNotFoundError
from bnlab.runner import run
from bnlab.train import device_claims
from bnlab.train.distributed import Rank
from bnlab.train.launch import Place, processes
from bnlab.train.outcome import Outcome, SigtermGuard, Terminated, recorded
from conftest import TINY, compose_cfg


@pytest.fixture
def four_gpus(monkeypatch, tmp_path):
    """A box with 4 CUDA devices, as a job sees them: CUDA_VISIBLE_DEVICES=4,5,6,7 (a sweep given half of 8)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    monkeypatch.setenv(device_claims.LOCK_DIR_ENV, str(tmp_path / "claims"))
    monkeypatch.setattr(device_claims, "POLL_S", 0.02)
    return current


def _job(processes_: int = 1) -> tuple[Place, object]:
    cfg = compose_cfg([*TINY, "device=auto", f"train.processes={processes_}"])
    return Place("spawn" if processes_ > 1 else "here"), cfg


def test_each_job_of_a_local_sweep_gets_its_own_gpu(four_gpus):
    """Jobs at once on 4 devices: 1 + 2 (a Sync BN job: its ranks see its 2 devices) + 1; a fifth waits for one."""
    a, cfg_a = _job()
    assert a.device(cfg_a, "cuda") == "cuda:0" and four_gpus == [0]
    b, cfg_b = _job(2)
    assert b.device(cfg_b, "cuda") == "cuda:1" and b.claimed == [1, 2]
    assert device_claims.visible_to_children(b.claimed) == "5,6"  # the spawned ranks' CUDA_VISIBLE_DEVICES
    c, cfg_c = _job()
    assert c.device(cfg_c, "cuda") == "cuda:3"

    d, cfg_d = _job()
    got = []
    waiting = threading.Thread(target=lambda: got.append(d.device(cfg_d, "cuda")))
    waiting.start()
    time.sleep(0.3)
    assert got == []  # every device is held: the fifth job waits instead of sharing one
    b.stack.close()  # the Sync BN job ends: its two devices are free
    waiting.join(timeout=10)
    assert got == ["cuda:1"]
    for place in (a, c, d):
        place.stack.close()


def test_ranks_and_explicit_devices_are_not_claimed(four_gpus):
    place, cfg = _job()
    assert place.device(cfg, "cuda:2") == "cuda:2"  # the user's choice
    assert place.device(cfg, "cpu") == "cpu"
    joined = Place("joined", Rank(1, 2, 1))
    assert joined.device(cfg, "cuda") == "cuda:1"  # torchrun / SLURM placed it: cuda:<local rank>
    assert place.claimed is None and not list((device_claims.lock_dir()).glob("*.lock"))


def test_one_visible_gpu_is_shared_as_before(four_gpus, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    first, second = _job()[0], _job()[0]
    cfg = compose_cfg([*TINY, "device=auto"])
    assert first.device(cfg, "cuda") == second.device(cfg, "cuda") == "cuda"


# read train.processes for a cost estimate or a data check, not to launch anything (to call launch.processes too)
OTHER_READERS = {"cost.py", "plan.py", "data/domains.py"}
READS_PROCESSES = r"""\.train\.processes\b|\.train\.get\(\s*["']processes|\.train\[["']processes"""


def test_train_processes_has_one_reader():
    """`launch.processes` reads it; the runner, config checks and the rank code ask it (issue 33: one reader)."""
    assert processes(compose_cfg([*TINY])) == 1
    assert processes(compose_cfg([*TINY, "train.processes=null"])) == 1
    assert processes(compose_cfg([*TINY, "train.processes=2"])) == 2
    src = Path(bnlab.__file__).parent
    readers = {str(path.relative_to(src)) for path in src.rglob("*.py") if re.search(READS_PROCESSES, path.read_text())}
    assert "train/launch.py" in readers and readers - {"train/launch.py"} <= OTHER_READERS, readers


def test_a_stop_signal_waits_for_the_epoch_files_then_stops_once():
    with pytest.raises(Terminated), SigtermGuard() as guard:
        with guard.deferred():  # writing an epoch's files: the signal waits
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert guard.stopping()
        pytest.fail("Terminated should be raised when the deferred block ends")
    with SigtermGuard() as guard:
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)  # a second one (forwarded and group-wide) is not raised again
        time.sleep(0.05)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_submitit_handlers_are_kept_and_called_after_the_run_stops(monkeypatch):
    """Inside a submitit job, its preemption signal (USR2) stops the run like SIGTERM, then submitit's own handler
    gets it (to checkpoint and requeue); its SIGTERM handler is called too, not replaced for good."""
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    seen: list[tuple[str, bool]] = []
    guard = SigtermGuard()
    requeue = lambda signum, frame: seen.append((signal.Signals(signum).name, guard.stopping()))
    previous = {s: signal.signal(s, requeue) for s in (signal.SIGUSR2, signal.SIGTERM)}
    try:
        for sig in (signal.SIGUSR2, signal.SIGTERM):
            guard = SigtermGuard()
            with pytest.raises(Terminated), guard:
                os.kill(os.getpid(), sig)
                time.sleep(0.5)
            assert seen[-1] == (sig.name, True)  # after the run stopped, exactly once
            assert signal.getsignal(sig) is requeue
        assert len(seen) == 2
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def test_a_failure_once_stopping_is_an_interruption_not_a_failure():
    """A rank whose peer left first sees a broken collective: after a stop signal that is no failure to record."""
    ended: list[Outcome] = []

    def broken_collective():
        raise RuntimeError("Connection closed by peer")

    with pytest.raises(Terminated):
        recorded(broken_collective, ended.append, raise_on_failure=False, stopping=lambda: True)
    assert ended[0].status == "running"  # nothing recorded, the checkpoint stays
    recorded(broken_collective, ended.append, raise_on_failure=False)
    assert ended[1].status == "failed"


@pytest.fixture
def engine_rank_env(monkeypatch):
    """This process as rank 1 of 2 that torchrun started (its env:// variables); no rank 0 exists."""
    for key, value in dict(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", LOCAL_WORLD_SIZE="2").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")  # nothing listens: joining the group before the checks would hang


@pytest.mark.parametrize(
    "bad, error",
    [("device=cuda", ConfigError), ("data.root=/nonexistent/fashion", DatasetNotFoundError)],
    ids=["no-cuda", "missing-dataset"],
)
def test_an_engine_rank_checks_before_joining_and_writes_nothing(tmp_path, engine_rank_env, bad, error):
    if bad == "device=cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = compose_cfg([*TINY, "norm.nbs=64", "train.processes=2", f"out_dir={tmp_path / 'runs'}", bad])
    with pytest.raises(error):
        run(cfg)
    assert not (tmp_path / "runs").exists()  # no run directory: never a `failed` run for an error before training


@pytest.mark.e2e
def test_a_rank_count_mismatch_is_one_line_exit_2(tmp_path):
    """Ranks started for another train.processes: rank 0 prints one line, every rank exits 2, nothing written."""
    args = [*TINY, "norm.nbs=64", "train.processes=2", f"out_dir={tmp_path / 'runs'}"]
    outs = []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "3", "LOCAL_RANK": str(rank), "WANDB_MODE": "disabled"}
        outs.append(
            subprocess.run(
                [sys.executable, "-m", "bnlab.train", *args], env=env, capture_output=True, text=True, timeout=300
            )
        )
    assert [o.returncode for o in outs] == [2, 2], outs[0].stderr[-2000:]
    assert outs[0].stderr.strip().count("\n") == 0 and "train.processes" in outs[0].stderr
    assert outs[1].stderr.strip() == ""
    assert not (tmp_path / "runs").exists()


def test_jobs_per_gpu_spread_over_devices_before_sharing(four_gpus, monkeypatch):
    """BNLAB_JOBS_PER_GPU=2 (make sweep JOBS_PER_GPU=2): 8 jobs at once, each device taken once before twice."""
    monkeypatch.setenv(device_claims.PER_DEVICE_ENV, "2")
    jobs = [_job() for _ in range(8)]
    assert [place.device(cfg, "cuda") for place, cfg in jobs] == [f"cuda:{i % 4}" for i in range(8)]
    for place, _ in jobs:
        place.stack.close()


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2,
    reason="needs 2 CUDA devices (one GPU per job of a local sweep): run on a GPU box",
)
def test_two_jobs_of_a_gpu_sweep_train_on_two_gpus(tmp_path):
    """`make sweep SCALE=gpu`'s joblib launcher: two jobs at once, each on its own GPU, recorded in its summary."""
    args = [*TINY, "device=auto", "train.epochs=2", f"out_dir={tmp_path / 'runs'}", "study=two_gpus"]
    sweep = ["-m", *args, "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    env = {**os.environ, device_claims.LOCK_DIR_ENV: str(tmp_path / "claims"), "WANDB_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-m", "bnlab.train", *sweep], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "runs" / "two_gpus").glob("*/summary.json")]
    assert sorted(s["device"] for s in summaries) == ["cuda:0", "cuda:1"]
