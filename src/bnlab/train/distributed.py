"""Several processes inside one run (one sweep job): Sync BN across devices, or across CPU processes with gloo.

`train.processes: N` makes the run's parent process (which holds the run lock) spawn N ranks
(bnlab.train.launch). Every rank draws
the same global batch and trains on its slice of it; DDP averages gradients; a norm layer whose `nbs` exceeds the
per-device batch all-reduces its statistics (bnlab.norm.BatchNorm2d). Every rank evaluates (so any collective in
a norm layer lines up) and only rank 0 writes files, logs and checkpoints.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import OmegaConf


@dataclass(frozen=True)
class Rank:
    index: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.index == 0

    def sum(self, *values: torch.Tensor) -> list[torch.Tensor]:
        """All-reduce sums (a no-op in one process): epoch totals of loss, errors and counts."""
        if self.world == 1:
            return list(values)
        packed = torch.stack([v.double() for v in values])
        dist.all_reduce(packed)
        return list(packed.unbind())


SINGLE = Rank()  # the one process of an ordinary run


def current_rank() -> Rank:
    if dist.is_available() and dist.is_initialized():
        return Rank(dist.get_rank(), dist.get_world_size())
    return SINGLE


def device_for(device: str, rank: Rank) -> str:
    return f"cuda:{rank.index}" if device.startswith("cuda") and rank.world > 1 else device


class ShardedLoader:
    """This rank's contiguous slice of every global batch (ranks see disjoint samples of the same batch)."""

    def __init__(self, loader, rank: Rank):
        self.loader, self.rank, self.device = loader, rank, loader.device

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            b = len(y) // self.rank.world
            sl = slice(self.rank.index * b, (self.rank.index + 1) * b)
            yield x[sl], y[sl]


def shard(loader, rank: Rank):
    return loader if rank.world == 1 else ShardedLoader(loader, rank)


def wrap_model(model: torch.nn.Module, rank: Rank) -> torch.nn.Module:
    if rank.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)


def _rank_main(index: int, entry, cfg_yaml: str, world: int, init_file: str, entry_args: tuple) -> None:
    cfg = OmegaConf.create(cfg_yaml)
    backend = "nccl" if str(cfg.device).startswith("cuda") and torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(index)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=index, world_size=world)
    try:
        entry(cfg, *entry_args)
        dist.barrier()  # every rank done before teardown: gloo aborts when a peer vanishes mid-connection
    finally:
        teardown()


def teardown() -> None:
    """Destroy the process group and drop every reference to it while the interpreter is fully alive: a Gloo
    group still referenced at exit is destroyed during interpreter shutdown, which can SIGABRT the rank."""
    from bnlab.norm.sync import release_groups

    release_groups()
    dist.destroy_process_group()
    gc.collect()  # autograd graphs that held a group (a Sync BN all-reduce's ctx) go now, not at exit


@contextmanager
def standard_start_method():
    """A spawned child re-applies its parent's global start method before it unpickles anything. Inside a joblib
    (loky) worker, where Hydra's joblib launcher runs each job, that method is 'loky', which the fresh child cannot
    find; so while ranks start, the global method is 'spawn', and the worker's own is restored afterwards."""
    method = multiprocessing.get_start_method(allow_none=True)
    if method is None or method in multiprocessing.get_all_start_methods():
        yield
        return
    multiprocessing.set_start_method("spawn", force=True)
    try:
        yield
    finally:
        multiprocessing.set_start_method(method, force=True)


def spawn_ranks(entry, cfg, processes: int, run_root: Path, *entry_args) -> None:
    """Run `entry(cfg, *entry_args)` in `processes` ranks and wait; a failing rank stops the others (torch's spawn
    semantics). The caller hands over the function (pycls's multi_proc_run), so this module imports no trainer."""
    init_file = (run_root / ".dist_init").resolve()  # absolute: in file://runs/x the "runs" would be a URL host
    init_file.unlink(missing_ok=True)  # a file store left by a killed attempt would confuse the rendezvous
    cfg_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    try:
        with standard_start_method():
            mp.start_processes(
                _rank_main,
                args=(entry, cfg_yaml, processes, str(init_file), entry_args),
                nprocs=processes,
                join=True,
                start_method="spawn",
            )
    finally:
        init_file.unlink(missing_ok=True)
