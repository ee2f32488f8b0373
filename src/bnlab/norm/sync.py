"""Sync BN: batch statistics over the samples of several processes (Wu, "Devils in BatchNorm", Sync BN slide).

Each rank computes its own (count, mean, variance) per channel and sends them through ONE all-gather; every rank
combines them with Chan et al.'s parallel formula and normalizes its own samples with the mean and variance of
the union (bnlab.norm.stats). In the backward each rank all-reduces its (sum dy, sum dy * x_hat) per channel, so
each sample's gradient sees the other ranks' samples through the shared statistics, exactly as single-process BN
over the whole batch. Counts travel with the moments, so ranks with unequal batches are weighted by their sizes.
Plain torch.distributed collectives: works with gloo on CPU (PyTorch's SyncBatchNorm only accepts CUDA tensors)
and with NCCL on GPU. The kernels are PyTorch's own fused batch-norm kernels (forward statistics, eval-mode
normalization, training-mode backward) plus one per-channel correction pass in the backward.
"""

from __future__ import annotations

import os

import torch.distributed as dist
from torch import Tensor

from bnlab.norm.stats import batch_norm_with_moments

_SUBGROUPS: dict[tuple[int, int], object] = {}


def consecutive_ranks_group(ranks_per_group: int):
    """The process group of this rank when ranks are split into groups of consecutive ranks (cached per size).

    Creating groups is collective: every rank must call this with the same size, which holds when every rank
    runs the same model on the same per-device batch size.
    """
    world = dist.get_world_size()
    key = (ranks_per_group, world)
    if key not in _SUBGROUPS:
        if ranks_per_group == world:
            _SUBGROUPS[key] = dist.group.WORLD
        else:
            _SUBGROUPS[key], _ = dist.new_subgroups(group_size=ranks_per_group)
    return _SUBGROUPS[key]


def release_groups() -> None:
    """Forget the cached groups: call before destroy_process_group, so no Python reference keeps a Gloo group
    (and its worker threads) alive into interpreter shutdown, where destroying it can abort the process."""
    _SUBGROUPS.clear()


def world_size() -> int:
    """Processes of this run: torch.distributed's, or WORLD_SIZE (set by torchrun before the group exists)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def sync_problem(nbs: int, batch_size: int, world: int) -> str | None:
    """The Sync BN rule, for nbs > the per-device batch: nbs is a multiple of the batch, and the nbs / batch
    consecutive ranks that share statistics divide the world. The problem as words, or None."""
    if nbs % batch_size:
        return "is Sync BN and must be a multiple of it"
    ranks = nbs // batch_size
    if world % ranks:
        return f"is Sync BN over {ranks} processes, but this run has {world}"
    return None


def ranks_for_nbs(nbs: int, batch_size: int) -> int:
    """How many consecutive ranks make the normalization batch `nbs` out of per-device batches of `batch_size`."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"nbs={nbs} is larger than the per-device batch of {batch_size}: that is Sync BN, which needs "
            "torch.distributed to be initialized (or pass process_group=...). For one process use nbs <= batch size."
        )
    problem = sync_problem(nbs, batch_size, dist.get_world_size())
    if problem:
        raise ValueError(f"nbs={nbs} > the per-device batch {batch_size} {problem}")
    return nbs // batch_size


def sync_batch_norm(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    factor: float,
    eps: float,
    group,
) -> Tensor:
    """Normalize `x` with the statistics of the union of all ranks' batches in `group`; update the EMA if given."""
    return batch_norm_with_moments(x, weight, bias, running_mean, running_var, factor, eps, group=group)
