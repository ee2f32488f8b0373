"""train.processes=2: Sync BN over two gloo CPU processes reproduces the single-process run with the same NBS."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from bnlab.config_errors import ConfigError
from bnlab.runner import run
from bnlab.train.run_dir import RunDir
from conftest import TINY, compose_cfg


def _metrics(summary) -> pd.DataFrame:
    return pd.read_csv(RunDir(summary["run_dir"]).metrics)


def _weights(summary) -> dict[str, torch.Tensor]:
    state = torch.load(RunDir(summary["run_dir"]).checkpoint, weights_only=False)["model"]
    return {k.removeprefix("module."): v for k, v in state.items() if v.dtype.is_floating_point}


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.e2e
def test_two_processes_with_sync_bn_match_one_process(tiny_cfg):
    """NBS 64 as 2 ranks x 32 (Sync BN + DDP) = one process with batch 64; per-rank BN (NBS 32) is the control.

    Compared after ONE optimizer step, every weight and running statistic: float32 rounding differs between the two
    (all-reduced sums), and this tiny net at lr 0.1 amplifies any difference ~10x per step (with GroupNorm, no BN at
    all, 1 vs 2 processes differ by 6e-7 after 1 step, 8e-5 after 2, 3e-3 after 4), so a trajectory comparison
    cannot tell a Sync BN bug from rounding; one step can. Sync BN lands 2e-6 away here. The same fused
    kernels fed with float32 (sum, sum of squares) instead of (count, mean, var) landed 5.5e-5 away.
    """
    step = ("train.epochs=1", "train.batches_per_epoch=1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank (bnlab.train.distributed): 2 threads alone move the weights by ~1e-5
    try:
        one = run(tiny_cfg("study=one", "norm.nbs=null", *step))
        two = run(tiny_cfg("study=two", "norm.nbs=64", "train.processes=2", *step))
        per_rank = run(tiny_cfg("study=per_rank", "norm.nbs=32", *step))  # what a missing sync would compute
    finally:
        torch.set_num_threads(before)
    assert two["status"] == "completed"
    assert not (RunDir(two["run_dir"]).root / ".dist_init").exists()
    w_one, w_two, w_control = _weights(one), _weights(two), _weights(per_rank)
    assert w_one.keys() == w_two.keys()
    assert _max_diff(w_one, w_two) < 1e-5, _max_diff(w_one, w_two)
    assert _max_diff(w_one, w_control) > 1e-3  # the control is far: the test can see a missing sync


@pytest.mark.e2e
def test_two_processes_train_and_evaluate(tiny_cfg):
    """A whole 2-epoch run with 2 processes completes with both epochs' metrics (trajectories are compared above)."""
    summary = run(tiny_cfg("study=two_epochs", "norm.nbs=64", "train.processes=2"))
    assert summary["status"] == "completed" and len(_metrics(summary)) == 2


@pytest.mark.e2e
def test_relative_out_dir_works_with_processes(tmp_path, monkeypatch):
    """The rendezvous file lives in the run directory; a relative out_dir (the default `runs`) must work."""
    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg([*TINY, "study=rel", "train.epochs=1", "norm.nbs=64", "train.processes=2", "out_dir=runs"])
    assert cfg.out_dir == "runs"
    summary = run(cfg)
    assert summary["status"] == "completed" and summary["run_dir"].startswith("runs/")
    assert (tmp_path / summary["run_dir"] / "summary.json").exists()


def test_processes_must_split_the_batch(tiny_cfg):
    with pytest.raises(ConfigError, match="train.processes"):
        run(tiny_cfg("train.processes=3"))


@pytest.mark.e2e
def test_processes_spawn_from_a_joblib_worker(tmp_path):
    """`make sweep` on CPU runs each job in a joblib (loky) worker, whose multiprocessing start method is 'loky';
    a spawned rank re-applies its parent's start method and cannot find 'loky' (the ten_ways sync arm died so)."""
    joblib = pytest.importorskip("joblib")
    cfg = compose_cfg([*TINY, "study=loky", "train.epochs=1", "norm.nbs=64", "train.processes=2"])
    cfg.out_dir = str(tmp_path)
    [summary] = joblib.Parallel(n_jobs=2, backend="loky")(joblib.delayed(run)(cfg) for _ in range(1))
    assert summary["status"] == "completed"
