"""Sync BN on 2 CPU processes (gloo) equals single-process nn.BatchNorm2d on the whole batch."""

from __future__ import annotations

import pytest
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


@pytest.mark.e2e
def test_sync_bn_two_processes_equals_whole_batch_bn(tmp_path):
    # spawn, not fork: a forked child of a process whose OpenMP pool already ran can hang
    mp.spawn(_worker, args=(str(tmp_path / "store"),), nprocs=2, join=True)


def test_combined_moments_stay_accurate_in_float32_where_sums_cancel():
    """Statistics of pieces combined from (count, mean, var) with Chan's formula keep float32 accuracy for channels
    whose mean is 25x and 250x their spread; E[x^2] - E[x]^2 from float32 sums (the old Sync BN exchange) loses
    the variance."""
    from bnlab.norm.stats import channel_sums, combine_moments, local_moments, mean_var

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, 8, 8, generator=g, dtype=torch.float64) * torch.tensor([1.0, 0.2, 0.04, 3.0]).view(
        1, -1, 1, 1
    ) + torch.tensor([0.0, 5.0, 10.0, -20.0]).view(1, -1, 1, 1)
    true_var = x.var(dim=(0, 2, 3), unbiased=False)
    pieces = [local_moments(p) for p in x.float().split([40, 24])]
    _, mean, var = combine_moments(*(torch.stack(t) for t in zip(*pieces)))
    torch.testing.assert_close(mean.double(), x.mean(dim=(0, 2, 3)), atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(var.double(), true_var, atol=0, rtol=1e-5)
    total, total_sq, count = (a + b for a, b in zip(*(channel_sums(p) for p in x.float().split([40, 24]))))
    var_sums = mean_var(total, total_sq, count)[1]
    rel = (var_sums.double() - true_var).abs() / true_var
    assert rel[2] > 1e-3, rel  # what float32 sums give at 250x (1e-4 at 25x: the error grows as (mean / std)^2)


def test_batch_norm_with_reference_moments_matches_whole_batch_bn_in_float32():
    """x normalized with statistics of (x + constant reference moments) = BN over the concatenation, forward and
    backward (the gradient of x's own share; the reference is a constant), float32 against float64."""
    from bnlab.norm.stats import batch_norm_with_moments, local_moments

    g = torch.Generator().manual_seed(1)
    shift = torch.tensor([0.0, 6.0, -3.0]).view(1, -1, 1, 1)
    x, ref = (torch.randn(n, 3, 5, 5, generator=g, dtype=torch.float64) * 0.3 + shift for n in (6, 10))
    gy = torch.randn(6, 3, 5, 5, generator=g, dtype=torch.float64)
    w, b = torch.tensor([0.5, 1.5, 2.0]), torch.tensor([0.1, -0.2, 0.3])
    # float64 reference: BN over the concatenation, gradient flowing only into x's share of the statistics
    xr = x.clone().requires_grad_()
    both = torch.cat([xr, ref])
    mean, var = both.mean(dim=(0, 2, 3)), both.var(dim=(0, 2, 3), unbiased=False)
    y_ref = (xr - mean.view(1, -1, 1, 1)) * torch.rsqrt(var + 1e-5).view(1, -1, 1, 1) * w.double().view(
        1, -1, 1, 1
    ) + b.double().view(1, -1, 1, 1)
    y_ref.backward(gy)
    xo = x.float().requires_grad_()
    y = batch_norm_with_moments(xo, w, b, None, None, 0.0, 1e-5, extra=local_moments(ref.float()))
    y.backward(gy.float())
    torch.testing.assert_close(y.double(), y_ref.detach(), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(xo.grad.double(), xr.grad, atol=2e-5, rtol=1e-5)
