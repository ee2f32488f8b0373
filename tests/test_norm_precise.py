"""Precise BN recomputes each BN layer's exact population statistics, whatever the batch sizes."""

from __future__ import annotations

import torch
from torch import nn

from bnlab.norm import BatchNorm2d, BatchRenorm2d, SeparateBatchNorm2d, adaptive_bn, precise_bn, use_domain

TOL = {"atol": 1e-10, "rtol": 1e-9}
SIZES = [5, 16, 3, 13]  # unequal, and small


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),  # PyTorch's
        nn.ReLU(),
        nn.Conv2d(4, 5, 3, padding=1),
        BatchNorm2d(5),  # bnlab's
        nn.ReLU(),
        nn.Conv2d(5, 3, 3, stride=2),
        BatchRenorm2d(3, warmup_steps=0, r_max_full_at=0, d_max_full_at=0),  # r, d use the running stats
    ).double()
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)  # not the defaults
    return net


def _dataset():
    g = torch.Generator().manual_seed(1)
    return torch.randn(sum(SIZES), 3, 6, 6, generator=g, dtype=torch.float64) * 2 + 1


def _batches(x):
    return list(torch.split(x, SIZES))


def _bn_inputs(net, batches):
    """Each BN layer's inputs over the same training-mode pass, captured by hooks, concatenated."""
    ref = _net()
    ref.load_state_dict(net.state_dict())
    ref.train()
    for m in ref:
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.0  # the same frozen upstream statistics precise_bn holds
    seen = {i: [] for i, m in enumerate(ref) if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    for i in seen:
        ref[i].register_forward_pre_hook(lambda m, args, i=i: seen[i].append(args[0]))
    with torch.no_grad():
        for x in batches:
            ref(x)
    return {i: torch.cat(v) for i, v in seen.items()}


def test_population_statistics_of_every_bn_input_with_unequal_batches():
    net, x = _net(), _dataset()
    net.eval()
    params = {k: v.clone() for k, v in net.named_parameters()}
    counters = {i: m.num_batches_tracked.clone() for i, m in enumerate(net) if hasattr(m, "num_batches_tracked")}
    inputs = _bn_inputs(net, _batches(x))
    used = precise_bn(net, [(b, torch.zeros(len(b))) for b in _batches(x)], num_samples=10_000)
    assert used == len(x)
    for i, xi in inputs.items():
        var, mean = torch.var_mean(xi, dim=(0, 2, 3), correction=0)  # the whole dataset at once
        torch.testing.assert_close(net[i].running_mean, mean, **TOL)
        torch.testing.assert_close(net[i].running_var, var, **TOL)
    # the first BN's inputs do not depend on batching: same as one forward of the whole dataset
    var0, mean0 = torch.var_mean(net[0](x), dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(net[1].running_mean, mean0, **TOL)
    torch.testing.assert_close(net[1].running_var, var0, **TOL)
    # nothing else changed: parameters, modes, momenta, step counters (BRN's schedule)
    assert all(torch.equal(v, dict(net.named_parameters())[k]) for k, v in params.items())
    assert not any(m.training for m in net.modules())
    assert net[1].momentum == 0.1 and net[4].momentum == 0.1 and net[7].momentum == 0.01
    assert all(torch.equal(net[i].num_batches_tracked, c) for i, c in counters.items())


def test_stops_at_num_samples_cutting_the_last_batch():
    net, x = _net(), _dataset()
    precise_bn(net, _batches(x), num_samples=12)  # 5 + first 7 of the 16
    inputs = _bn_inputs(net, [x[:5], x[5:12]])
    var, mean = torch.var_mean(inputs[1], dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(net[1].running_mean, mean, **TOL)
    torch.testing.assert_close(net[1].running_var, var, **TOL)
    assert net.training


def test_differs_from_the_ema_it_replaces():
    net, x = _net(), _dataset()
    net.train()
    for b in _batches(x):
        net(b)  # EMA after a few steps: far from the population
    ema = net[4].running_var.clone()
    precise_bn(net, _batches(x))
    assert not torch.allclose(net[4].running_var, ema, rtol=1e-3)


def test_adaptive_bn_updates_only_the_active_domain_of_separate_bn():
    layer = SeparateBatchNorm2d(3, num_domains=2).double()
    model = nn.Sequential(layer)
    target = _dataset() * 3 - 2
    with use_domain(model, 1):
        adaptive_bn(model, _batches(target))
    var, mean = torch.var_mean(target, dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(layer.domains[1].running_mean, mean, **TOL)
    torch.testing.assert_close(layer.domains[1].running_var, var, **TOL)
    assert torch.equal(layer.domains[0].running_mean, torch.zeros(3, dtype=torch.float64))
    assert layer.domain == 0
