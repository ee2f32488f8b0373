"""Precise BN recomputes each BN layer's exact population statistics, whatever the batch sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnlab.norm import (
    BatchNorm2d,
    BatchRenorm2d,
    SeparateBatchNorm2d,
    adaptive_bn,
    frozen_ema,
    precise_bn,
    use_domain,
)

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


def _deep_net(norm):
    """Three norm layers in a chain, running statistics far from the data's, so stale statistics would show."""
    torch.manual_seed(2)
    layers = []
    for c_in, c_out in [(3, 4), (4, 5), (5, 3)]:
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), norm(c_out), nn.ReLU()]
    net = nn.Sequential(*layers).double()
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-3, 3), m.running_var.uniform_(0.1, 5)
                m.weight.uniform_(0.5, 2), m.bias.uniform_(-1, 1)
    return net


def _eval_inputs(net, x):
    """Each norm layer's input in the evaluated (eval-mode) network, by hooks."""
    seen = {}
    handles = [
        m.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(i, args[0]))
        for i, m in enumerate(net)
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    net.eval()
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    return seen


NORMS = {
    "bn": lambda c: nn.BatchNorm2d(c),
    "bnlab_bn_running": lambda c: BatchNorm2d(c, train_stats="running"),  # normalizes by running stats in training
    # constant, wide limits: r, d from the running statistics are never clipped, so a pass in plain training mode
    # normalizes by the old running statistics
    "brn": lambda c: BatchRenorm2d(c, r_max=1e6, d_max=1e6, warmup_steps=0, r_max_full_at=0, d_max_full_at=0),
    "brn_warm": lambda c: BatchRenorm2d(c, warmup_steps=0, r_max_full_at=1, d_max_full_at=1),  # clipped r, d
}


@pytest.mark.parametrize("norm", NORMS)
def test_running_statistics_are_those_of_the_evaluated_network(norm):
    """After precise_bn each layer's running mean/var are the mean/var of its input in the eval-mode network.

    Every batch holds the same samples (permuted), so batch statistics equal population statistics and the
    training-mode pass sees exactly the evaluated network: equality holds to rounding, layer after layer."""
    net, x = _deep_net(NORMS[norm]), _dataset()
    g = torch.Generator().manual_seed(3)
    batches = [x, x.flip(0), x[torch.randperm(len(x), generator=g)]]
    precise_bn(net, batches, num_samples=10_000)
    inputs = _eval_inputs(net, x)
    assert len(inputs) == 3
    for i, xi in inputs.items():
        var, mean = torch.var_mean(xi, dim=(0, 2, 3), correction=0)
        torch.testing.assert_close(net[i].running_mean, mean, **TOL)
        torch.testing.assert_close(net[i].running_var, var, **TOL)
    # the pass's settings are restored
    assert all(m.r_max > 1 for m in net if isinstance(m, BatchRenorm2d))
    assert all(m.train_stats == "running" for m in net if isinstance(m, BatchNorm2d) and norm == "bnlab_bn_running")


@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
def test_frozen_ema_replays_the_ema_from_the_initial_statistics(momentum):
    """EMA re-run on a frozen model = the EMA formula over the batch statistics of its inputs, started at (0, 1)."""
    torch.manual_seed(4)
    conv = nn.Conv2d(3, 4, 3).double()
    net = nn.Sequential(conv, nn.BatchNorm2d(4, momentum=momentum).double(), nn.ReLU()).double()
    x = _dataset()
    batches = _batches(x)
    net.train()
    for b in batches * 2:  # "training": 8 steps (the conv is frozen here, so nothing moves)
        net(b)
    net[1].running_mean.fill_(7.0)  # whatever training left is discarded
    params = {k: v.clone() for k, v in net.named_parameters()}
    net.eval()
    assert frozen_ema(net, batches) == 8  # as many passes as training, cycling through the 4 batches
    mean, var = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    with torch.no_grad():
        for k, b in enumerate(batches * 2):
            f = conv(b)
            bv, bm = torch.var_mean(f, dim=(0, 2, 3), correction=1)  # PyTorch's EMA: unbiased batch variance
            m = 1.0 / (k + 1) if momentum is None else momentum  # None: cumulative average
            mean, var = (1 - m) * mean + m * bm, (1 - m) * var + m * bv
    torch.testing.assert_close(net[1].running_mean, mean, **TOL)
    torch.testing.assert_close(net[1].running_var, var, **TOL)
    assert int(net[1].num_batches_tracked) == 8 and not net.training
    assert all(torch.equal(v, dict(net.named_parameters())[k]) for k, v in params.items())
    assert frozen_ema(net, batches, steps=3) == 3  # an explicit count


def test_frozen_ema_after_many_steps_approaches_precise_bn():
    """With the model frozen, a long EMA forgets its initial value: it lands near the population statistics."""
    net, x = _deep_net(lambda c: nn.BatchNorm2d(c, momentum=0.5)), _dataset()
    net.double()
    frozen_ema(net, [x], steps=60)  # full-data batches: batch statistics = population statistics
    ema = [m.running_mean.clone() for m in net if isinstance(m, nn.BatchNorm2d)]
    precise_bn(net, [x])
    for e, m in zip(ema, [m for m in net if isinstance(m, nn.BatchNorm2d)]):
        torch.testing.assert_close(e, m.running_mean, rtol=1e-9, atol=1e-9)


def test_ema_frozen_eval_mode_in_a_training_run(tiny_cfg):
    from bnlab.runner import run

    summary = run(tiny_cfg("eval.modes=[running,ema_frozen]", "train.epochs=1"))
    assert summary["status"] == "completed"
    final = summary["final"]
    for mode in ("running", "ema_frozen"):
        assert 0 <= final[f"val_err_{mode}"] <= 1 and final[f"val_loss_{mode}"] == final[f"val_loss_{mode}"]
    assert final["val_loss_ema_frozen"] != final["val_loss_running"]  # the same EMA, on a model that stood still
