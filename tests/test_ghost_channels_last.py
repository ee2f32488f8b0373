"""Ghost BN on a channels_last batch: a fixed number of operators whatever the number of groups, and the numbers
of nn.BatchNorm2d applied to each group (norm/ghost.py, `GroupedGhostBatchNormFn`)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from bnlab.norm.batchnorm import BatchNorm2d


class OperatorCount(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def _operators(layer: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """aten operators of one forward and of its backward."""
    x = x.detach().requires_grad_()
    with OperatorCount() as forward:
        y = layer(x)
    with OperatorCount() as backward:
        y.backward(torch.ones_like(y))
    return forward.n, backward.n


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_operator_count_does_not_grow_with_the_number_of_groups(layout):
    x = torch.randn(128, 16, 16, 16).contiguous(memory_format=torch.channels_last)
    counts = {nbs: _operators(BatchNorm2d(16, nbs=nbs, ghost_layout=layout), x) for nbs in (2, 8, 64)}
    assert len(set(counts.values())) == 1, counts  # 64, 16 and 2 groups: the same operators
    assert sum(counts[2]) < 80  # tens, not the hundreds a loop over 64 groups launched (656 + 652 before)


def _per_group_reference(x, weight, bias, nbs, layout):
    """nn.BatchNorm2d over each group separately (the definition of Ghost BN), running statistics averaged."""
    groups = x.shape[0] // nbs
    members = [torch.arange(g * nbs, (g + 1) * nbs) if layout == "contiguous" else torch.arange(g, x.shape[0], groups)
               for g in range(groups)]  # fmt: skip
    out = torch.empty_like(x)
    means, variances = [], []
    for idx in members:
        bn = nn.BatchNorm2d(x.shape[1], momentum=0.1)
        with torch.no_grad():
            bn.weight.copy_(weight), bn.bias.copy_(bias)
        out[idx] = bn(x[idx])
        means.append(bn.running_mean), variances.append(bn.running_var)
    return out, torch.stack(means).mean(0), torch.stack(variances).mean(0)


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_matches_batchnorm2d_per_group_and_the_contiguous_memory_path(layout):
    torch.manual_seed(0)
    x = torch.randn(32, 6, 5, 5) * 3 + 1
    weight, bias, grad = torch.rand(6) + 0.5, torch.randn(6), torch.randn(32, 6, 5, 5)
    results = {}
    for fmt in (torch.channels_last, torch.contiguous_format):
        layer = BatchNorm2d(6, nbs=4, ghost_layout=layout, momentum=0.1)
        with torch.no_grad():
            layer.weight.copy_(weight), layer.bias.copy_(bias)
        xi = x.contiguous(memory_format=fmt).requires_grad_()
        y = layer(xi)
        y.backward(grad)
        results[fmt] = (y, xi.grad, layer.weight.grad, layer.bias.grad, layer.running_mean, layer.running_var)
    y, gx, gw, gb, rm, rv = results[torch.channels_last]
    assert y.is_contiguous(memory_format=torch.channels_last) and gx.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(results[torch.channels_last], results[torch.contiguous_format]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    ref, ref_rm, ref_rv = _per_group_reference(x.requires_grad_(), weight, bias, 4, layout)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rm, ref_rm, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rv, ref_rv, rtol=1e-6, atol=1e-6)
