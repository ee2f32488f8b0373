"""Several processes inside one run (one sweep job): Sync BN across devices, or across CPU processes with gloo.

The parts of a multi-process run: a rank's place (Rank), what another engine says it is (`launched_rank`: torchrun's
env:// variables, submitit's TorchDistributedEnvironment, SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID), the group
(`join_group`, `teardown`), the batch slice (ShardedLoader) and DDP. Which processes a run has, and who starts them
(bnlab spawns, torchrun or SLURM did, or one process) is bnlab.train.launch's decision.
Every rank draws the same global batch and trains on its slice of it; DDP averages gradients; a norm layer whose
`nbs` exceeds the per-device batch all-reduces its statistics (bnlab.norm.BatchNorm2d). Every rank evaluates (so
any collective in a norm layer lines up) and only rank 0 writes files, logs and checkpoints. On CUDA, rank r of a
node uses cuda:<local rank>; the node's device count is checked before NCCL starts (DeviceCountError).
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from bnlab.config_errors import ConfigError


class DeviceCountError(ConfigError):
    """A run's ranks on one node need more CUDA devices than the node shows (raised before NCCL starts)."""


@dataclass(frozen=True)
class Rank:
    index: int = 0
    world: int = 1
    local: int = 0  # rank on this node: its CUDA device is cuda:<local>

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
        index = dist.get_rank()
        return Rank(index, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", index)))
    return SINGLE


@dataclass(frozen=True)
class LaunchedRank:
    """This process's place in a run whose ranks another engine started (torchrun, SLURM tasks, submitit)."""

    index: int
    world: int
    local: int
    local_world: int
    engine: str  # torchrun | env | submitit | slurm


def launched_rank(processes: int) -> LaunchedRank | None:
    """The rank the environment gives this process, when the run has `processes` > 1 and an engine started its
    ranks; None when bnlab is to spawn them itself. Sets the env:// variables (MASTER_ADDR/PORT, RANK, WORLD_SIZE,
    LOCAL_RANK) where the engine did not. Only read for processes > 1: a SLURM allocation with several tasks that
    runs one bnlab process (a whole sweep) must not be taken for ranks."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun, or a user exporting env:// variables
        index, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", index))
        engine = "torchrun" if "TORCHELASTIC_RUN_ID" in env else "env"
        placement = LaunchedRank(index, world, local, int(env.get("LOCAL_WORLD_SIZE", world)), engine)
    elif processes <= 1:
        return None
    elif env.get("SUBMITIT_EXECUTOR"):  # a submitit job (Hydra's submitit launchers): its own helper
        from submitit.helpers import TorchDistributedEnvironment

        d = TorchDistributedEnvironment()
        if d.world_size <= 1:
            return None
        d.export(set_cuda_visible_devices=False, overwrite=True)  # every task sees the node's GPUs: cuda:<local>
        placement = LaunchedRank(d.rank, d.world_size, d.local_rank, d.local_world_size, "submitit")
    elif "SLURM_STEP_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:  # inside `srun --ntasks=N`
        world, nodes = int(env["SLURM_NTASKS"]), int(env.get("SLURM_JOB_NUM_NODES", env.get("SLURM_NNODES", "1")))
        if "MASTER_ADDR" not in env and nodes > 1:
            raise ConfigError(
                "train.processes",
                "srun over several nodes: export MASTER_ADDR (the first node: "
                "`export MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1)`) before srun",
            )
        placement = LaunchedRank(
            int(env["SLURM_PROCID"]), world, int(env.get("SLURM_LOCALID", 0)), world // nodes, "slurm"
        )
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 40000))  # as submitit does
        env.update(RANK=str(placement.index), WORLD_SIZE=str(world), LOCAL_RANK=str(placement.local))
    else:
        return None
    if placement.world <= 1 and processes <= 1:
        return None
    if placement.world != processes:  # the same words on every rank: __main__ prints rank 0's only
        raise ConfigError(
            "train.processes",
            f"is {processes}, but {placement.engine} started {placement.world} ranks: start as many ranks as "
            "train.processes (torchrun --nproc_per_node x --nnodes, SLURM tasks_per_node x nodes), or one process "
            "and let bnlab spawn them",
        )
    return placement


def backend_for(device: str) -> str:
    """NCCL for CUDA ranks (`auto` on a machine with CUDA included), gloo on CPU."""
    return "nccl" if torch.cuda.is_available() and (device.startswith("cuda") or device == "auto") else "gloo"


def check_device_count(local_world: int, device: str) -> None:
    """NCCL on a device index the node lacks dies with 'invalid device ordinal' deep inside a rank; say it first."""
    if backend_for(device) != "nccl":
        return
    found = torch.cuda.device_count()
    if found < local_world:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise DeviceCountError(
            "train.processes",
            f"{local_world} ranks on this node need {local_world} CUDA devices, {found} visible"
            + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else "")
            + "; on SLURM ask gpus_per_node >= tasks per node (conf/hydra/launcher/slurm.yaml derives both from "
            "train.processes)",
        )


def join_group(cfg, placement: LaunchedRank) -> None:
    """Join the run's process group through env:// (this process is one of the engine's ranks)."""
    backend = backend_for(str(cfg.device))
    if backend == "nccl":
        check_device_count(placement.local_world, str(cfg.device))
        torch.cuda.set_device(placement.local)
    os.environ["LOCAL_RANK"] = str(placement.local)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // placement.local_world))  # as the spawned ranks
    dist.init_process_group(backend, init_method="env://", rank=placement.index, world_size=placement.world)


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


def teardown() -> None:
    """Destroy the process group and drop every reference to it while the interpreter is fully alive: a Gloo
    group still referenced at exit is destroyed during interpreter shutdown, which can SIGABRT the rank."""
    from bnlab.norm.sync import release_groups

    release_groups()
    dist.destroy_process_group()
    gc.collect()  # autograd graphs that held a group (a Sync BN all-reduce's ctx) go now, not at exit
