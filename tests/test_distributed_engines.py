"""A Sync BN run's ranks started three ways give the same run: bnlab's spawn, `torchrun --nproc_per_node=2`, and
submitit's local executor with 2 tasks (the path of Hydra's submitit launchers on SLURM). gloo on CPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from bnlab.config_errors import ConfigError
from bnlab.runner import run
from bnlab.train.distributed import DeviceCountError, check_device_count, launched_rank
from bnlab.train.run_dir import RunDir
from conftest import TINY, compose_cfg

# one optimizer step of NBS 64 over 2 ranks of 32: the comparison test_distributed.py makes against one process
SYNC_RUN = [*TINY, "study=engines", "norm.nbs=64", "train.processes=2", "train.epochs=1", "train.batches_per_epoch=1"]
TOLERANCE = 1e-5  # test_distributed.py's bound between 1 and 2 processes after one step
# submitit's task processes are started by submitit's own interpreter bootstrap, and their float order is not
# spawn's: 1.3e-5 apart after this one step on the 2-core CI machine (and ~1e-5 in test_launch_signals.py, which
# therefore compares submitit with submitit); one process vs spawn's 2 is as far apart (1.3e-5). Ranks that
# normalize with their own halves instead of the synced batch end 4e-2 away, so 1e-4 still tells them apart.
SUBMITIT_TOLERANCE = 1e-4


def _weights(run_dir) -> dict[str, torch.Tensor]:
    state = torch.load(RunDir(run_dir).checkpoint, weights_only=False)["model"]
    return {k.removeprefix("module."): v for k, v in state.items() if v.dtype.is_floating_point}


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _only_run(out_dir) -> str:
    [summary] = [p for p in (out_dir / "engines").glob("*/summary.json")]
    return str(summary.parent)


@pytest.mark.slow
def test_spawn_torchrun_and_submitit_ranks_train_the_same_run(tmp_path):
    submitit = pytest.importorskip("submitit")
    spawned = run(compose_cfg([*SYNC_RUN, f"out_dir={tmp_path / 'spawn'}"]))
    assert spawned["status"] == "completed"

    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "bnlab.train"]
    done = subprocess.run(
        [*cmd, *SYNC_RUN, f"out_dir={tmp_path / 'torchrun'}"], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]

    executor = submitit.LocalExecutor(folder=tmp_path / "submitit_logs")
    executor.update_parameters(tasks_per_node=2, timeout_min=10)
    job = executor.submit(run, compose_cfg([*SYNC_RUN, f"out_dir={tmp_path / 'submitit'}"]))
    results = job.results()  # one per task; rank 0's is the summary it wrote
    assert len(results) == 2 and results[0]["status"] == "completed"
    logs = "".join(f.read_text() for f in (tmp_path / "submitit_logs").glob("*_log.out"))
    assert "skipping" not in logs  # both tasks were ranks of one run (not two runs racing for its lock)

    runs = {how: _only_run(tmp_path / how) for how in ("spawn", "torchrun", "submitit")}
    assert len({os.path.basename(r) for r in runs.values()}) == 1  # the same config hash: the same run
    w = {how: _weights(r) for how, r in runs.items()}
    assert _max_diff(w["spawn"], w["torchrun"]) < TOLERANCE
    assert _max_diff(w["spawn"], w["submitit"]) < SUBMITIT_TOLERANCE
    for r in runs.values():
        assert not (RunDir(r).root / ".lock").exists() or RunDir(r).status() == "completed"


def test_ranks_come_from_torchrun_variables(monkeypatch):
    for k in ("SUBMITIT_EXECUTOR", "SLURM_STEP_ID", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # 2 nodes x 2
    p = launched_rank(4)
    assert (p.index, p.world, p.local, p.local_world, p.engine) == (3, 4, 1, 2, "env")
    with pytest.raises(ConfigError, match="train.processes.*torchrun started 4 ranks|env started 4 ranks"):
        launched_rank(2)  # started 4 ranks for a 2-rank run: named, before any group forms


def test_ranks_come_from_srun_variables(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SUBMITIT_EXECUTOR", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(k, "")  # recorded even when unset, so what launched_rank exports is removed afterwards
        monkeypatch.delenv(k)
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    assert launched_rank(1) is None  # a 1-process run inside a multi-task allocation is not a rank
    p = launched_rank(2)
    assert (p.index, p.world, p.local, p.engine) == (1, 2, 1, "slurm")
    assert os.environ["RANK"] == "1" and os.environ["MASTER_ADDR"] == "127.0.0.1"
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        launched_rank(2)


def test_too_few_gpus_is_named_before_nccl(monkeypatch):
    """Two ranks on a node with one GPU: DeviceCountError (exit 2, one line), not 'invalid device ordinal'."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceCountError, match="2 ranks on this node need 2 CUDA devices, 1 visible"):
        check_device_count(2, "cuda")
    check_device_count(1, "cuda")
    check_device_count(2, "cpu")  # gloo: no device to count
