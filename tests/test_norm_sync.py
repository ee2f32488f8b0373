"""Sync BN on 2 CPU processes (gloo) equals single-process nn.BatchNorm2d on the whole batch."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from bnlab.norm import BatchNorm2d
from bnlab.train.distributed import teardown

TOL = {"atol": 1e-12, "rtol": 1e-10}


def _check(rank: int, sizes: tuple[int, int], steps: int, make_layer) -> None:
    """Each rank gets its slice of the same global batch; compare with nn.BatchNorm2d on the whole batch."""
    total, start = sum(sizes), sum(sizes[:rank])
    idx = slice(start, start + sizes[rank])
    ours, ref = make_layer().double(), nn.BatchNorm2d(3, momentum=0.2).double()
    with torch.no_grad():
        for m in (ours, ref):
            m.weight.copy_(torch.tensor([0.5, 1.5, 2.0])), m.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    for step in range(steps):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(total, 3, 4, 4, generator=g, dtype=torch.float64) * 3 + 1
        gy = torch.randn(total, 3, 4, 4, generator=g, dtype=torch.float64)
        ours.zero_grad(), ref.zero_grad()
        xr = x.clone().requires_grad_()
        y_ref = ref(xr)
        y_ref.backward(gy)
        xo = x[idx].clone().requires_grad_()
        y = ours(xo)
        y.backward(gy[idx])
        torch.testing.assert_close(y, y_ref[idx], **TOL)
        torch.testing.assert_close(xo.grad, xr.grad[idx], **TOL)
        for p, p_ref in ((ours.weight, ref.weight), (ours.bias, ref.bias)):
            dist.all_reduce(p.grad)  # what DDP does with the per-rank parameter gradients
            torch.testing.assert_close(p.grad, p_ref.grad, **TOL)
        torch.testing.assert_close(ours.running_mean, ref.running_mean, **TOL)
        torch.testing.assert_close(ours.running_var, ref.running_var, **TOL)


def _worker(rank: int, store: str) -> None:
    torch.set_num_threads(1)
    # a file store, not TCP: no store-server thread in rank 0 that the other rank could outlive at teardown
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        # equal halves: the group is derived from nbs (8) and the per-device batch (4)
        _check(rank, (4, 4), 3, lambda: BatchNorm2d(3, momentum=0.2, nbs=8))
        # unequal halves: sums are weighted by each rank's count; group given explicitly
        _check(rank, (5, 2), 3, lambda: BatchNorm2d(3, momentum=0.2, process_group=dist.group.WORLD))
        dist.barrier()  # both ranks done before teardown (gloo aborts if a peer vanishes mid-connection)
    finally:
        teardown()  # no reference to the group survives into interpreter shutdown (SIGABRT there, torch 2.14)


def test_sync_bn_two_processes_equals_whole_batch_bn(tmp_path):
    # spawn, not fork: a forked child of a process whose OpenMP pool already ran can hang
    mp.spawn(_worker, args=(str(tmp_path / "store"),), nprocs=2, join=True)
