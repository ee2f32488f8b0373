"""Batch Renormalization against Ioffe 2017, Algorithm 1, written out by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnlab.norm import BatchNorm2d, BatchRenorm2d

TOL = {"atol": 1e-12, "rtol": 1e-10}
CONSTANT = {"warmup_steps": 0, "r_max_full_at": 0, "d_max_full_at": 0}


def _data(b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, 4, 4, generator=g, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.2]).view(1, 3, 1, 1)
    return x + torch.tensor([0.0, 2.0, -1.0], dtype=torch.float64).view(1, 3, 1, 1)


def _set(layer, mu, var):
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.7, 1.3, 2.0])), layer.bias.copy_(torch.tensor([0.1, -0.4, 0.2]))
        layer.running_mean.copy_(torch.tensor(mu)), layer.running_var.copy_(torch.tensor(var))
    return layer


def _by_hand(x, layer, r_max, d_max, eps=1e-5):
    """Algorithm 1 with r and d stopped; returns (y, r, d, mu_B, sigma_B) for running mu, sigma of `layer`."""
    mu = layer.running_mean.clone()
    sigma = (layer.running_var + eps).sqrt()
    mu_b = x.mean((0, 2, 3))
    sigma_b = (x.var((0, 2, 3), unbiased=False) + eps).sqrt()
    r = (sigma_b / sigma).clamp(1 / r_max, r_max).detach()
    d = ((mu_b - mu) / sigma).clamp(-d_max, d_max).detach()
    v = lambda t: t.view(1, -1, 1, 1)
    x_hat = (x - v(mu_b)) / v(sigma_b) * v(r) + v(d)
    return v(layer.weight) * x_hat + v(layer.bias), r, d, mu_b, sigma_b


def test_equals_batchnorm_in_training_while_r_max_is_1_and_d_max_is_0():
    brn = _set(BatchRenorm2d(3), [5.0, -3.0, 0.0], [9.0, 0.1, 4.0]).double()  # far off, but limits are 1 and 0
    bn = _set(nn.BatchNorm2d(3), [0.0] * 3, [1.0] * 3).double()
    x, gy = _data(), _data(seed=1)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = brn(xa), bn(xb)
    ya.backward(gy), yb.backward(gy)
    torch.testing.assert_close(ya, yb, **TOL)
    for a, b in ((xa.grad, xb.grad), (brn.weight.grad, bn.weight.grad), (brn.bias.grad, bn.bias.grad)):
        torch.testing.assert_close(a, b, **TOL)


def test_matches_algorithm_1_by_hand_with_clipping_and_detached_r_d_gradients():
    brn = _set(BatchRenorm2d(3, momentum=0.1, r_max=1.5, d_max=0.5, **CONSTANT), [0.5, 0.0, -1.2], [1.0, 4.0, 1.0])
    brn = brn.double()
    ref = _set(nn.BatchNorm2d(3), [0.5, 0.0, -1.2], [1.0, 4.0, 1.0]).double()  # same buffers, for the formula
    x, gy = _data(), _data(seed=1)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = brn(xa)
    y_hand, r, d, mu_b, sigma_b = _by_hand(xb, ref, 1.5, 0.5)
    # the chosen statistics make some r and d clip and some not
    assert ((r == 1.5) | (r == 1 / 1.5)).any() and ((r < 1.5) & (r > 1 / 1.5)).any()
    assert (d.abs() == 0.5).any() and (d.abs() < 0.5).any()
    torch.testing.assert_close(y, y_hand, **TOL)
    y.backward(gy), y_hand.backward(gy)
    torch.testing.assert_close(xa.grad, xb.grad, **TOL)
    torch.testing.assert_close(brn.weight.grad, ref.weight.grad, **TOL)
    torch.testing.assert_close(brn.bias.grad, ref.bias.grad, **TOL)
    # running mean and running *sigma* move by alpha (Algorithm 1); sigma is stored as running_var + eps
    sigma_old = (ref.running_var + 1e-5).sqrt()  # ref's buffers: the values brn started from
    sigma_new = sigma_old + 0.1 * (sigma_b.detach() - sigma_old)
    mu_new = ref.running_mean + 0.1 * (mu_b.detach() - ref.running_mean)
    torch.testing.assert_close(brn.running_mean, mu_new, **TOL)
    torch.testing.assert_close((brn.running_var + 1e-5).sqrt(), sigma_new, **TOL)
    # inference uses mu and sigma
    brn.eval()
    v = lambda t: t.view(1, -1, 1, 1)
    y_eval = v(brn.weight) * (x - v(mu_new)) / v(sigma_new) + v(brn.bias)
    torch.testing.assert_close(brn(x), y_eval, **TOL)


def test_input_gradient_differs_from_one_through_r_and_d():
    """The stop-gradient matters: autograd through r and d gives another input gradient."""
    brn = _set(BatchRenorm2d(3, r_max=1.5, d_max=0.5, **CONSTANT), [0.5, 0.0, -1.2], [1.0, 4.0, 1.0]).double()
    x, gy = _data(), _data(seed=1)
    xa = x.clone().requires_grad_()
    brn(xa).backward(gy)
    xb = x.clone().requires_grad_()
    mu, sigma = torch.tensor([0.5, 0.0, -1.2]).double(), torch.tensor([1.0, 4.0, 1.0]).double().add(1e-5).sqrt()
    mu_b, sigma_b = xb.mean((0, 2, 3)), (xb.var((0, 2, 3), unbiased=False) + 1e-5).sqrt()
    r, d = (sigma_b / sigma).clamp(1 / 1.5, 1.5), ((mu_b - mu) / sigma).clamp(-0.5, 0.5)  # NOT detached
    v = lambda t: t.view(1, -1, 1, 1)
    y = v(brn.weight.detach()) * ((xb - v(mu_b)) / v(sigma_b) * v(r) + v(d)) + v(brn.bias.detach())
    y.backward(gy)
    assert not torch.allclose(xa.grad, xb.grad, atol=1e-6)


def test_schedule_values_and_step_counter():
    brn = BatchRenorm2d(3)  # paper: 1 / 0 until 5k, r_max 3 at 40k, d_max 5 at 25k, linear in between
    expected = {0: (1, 0), 4999: (1, 0), 5000: (1, 0), 15000: (1 + 2 * 10 / 35, 2.5), 22500: (2, 4.375)}
    expected.update({25000: (1 + 2 * 20 / 35, 5), 40000: (3, 5), 10**6: (3, 5)})
    for step, (r, d) in expected.items():
        r_max, d_max = brn.limits(step)
        assert float(r_max) == pytest.approx(r) and float(d_max) == pytest.approx(d), step
    const = BatchRenorm2d(3, r_max=2.0, d_max=1.0, **CONSTANT)
    assert [float(t) for t in const.limits(0)] == [2.0, 1.0]
    brn.num_batches_tracked.fill_(22500)  # the step counter is num_batches_tracked
    assert float(brn.limits()[0]) == pytest.approx(2.0)
    brn(torch.randn(4, 3, 2, 2))
    assert int(brn.num_batches_tracked) == 22501


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_micro_batches_each_group_renormalized_by_hand(layout, fmt, ghost_path):
    brn = _set(
        BatchRenorm2d(3, r_max=1.5, d_max=0.5, nbs=4, ghost_layout=layout, **CONSTANT), [0.5, 0.0, -1.2], [1.0] * 3
    )
    brn = brn.double()
    ref = _set(nn.BatchNorm2d(3), [0.5, 0.0, -1.2], [1.0] * 3).double()
    x = _data(b=12).contiguous(memory_format=fmt)
    gy = _data(b=12, seed=5).contiguous(memory_format=fmt)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = brn(xa)
    assert y.is_contiguous(memory_format=fmt)
    groups = (
        [torch.arange(g * 4, g * 4 + 4) for g in range(3)]
        if layout == "contiguous"
        else [torch.arange(g, 12, 3) for g in range(3)]
    )
    sigmas, y_hands = [], torch.empty_like(x)
    for idx in groups:
        y_hand, _, _, _, sigma_b = _by_hand(xb[idx], ref, 1.5, 0.5)
        torch.testing.assert_close(y[idx], y_hand, **TOL)
        y_hands[idx] = y_hand
        sigmas.append(sigma_b.detach())
    # gradients: autograd through the by-hand formula of each group (r and d stopped)
    y.backward(gy), y_hands.backward(gy)
    torch.testing.assert_close(xa.grad, xb.grad, **TOL)
    torch.testing.assert_close(brn.weight.grad, ref.weight.grad, **TOL)
    torch.testing.assert_close(brn.bias.grad, ref.bias.grad, **TOL)
    sigma_old = torch.tensor(1.0 + 1e-5, dtype=torch.float64).sqrt()
    sigma_new = sigma_old + 0.01 * (torch.stack(sigmas).mean(0) - sigma_old)  # group average moves the EMA
    torch.testing.assert_close((brn.running_var + 1e-5).sqrt(), sigma_new, **TOL)
    # with limits 1 / 0 the micro-batches are Ghost BN
    plain = BatchRenorm2d(3, nbs=4, ghost_layout=layout).double()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), BatchNorm2d(3, nbs=4, ghost_layout=layout).double()(x), **TOL)


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="r_max >= 1"):
        BatchRenorm2d(3, r_max=0.5)
    with pytest.raises(ValueError, match="nbs=3 does not divide the batch size 8"):
        BatchRenorm2d(3, nbs=3)(torch.randn(8, 3, 2, 2))
    with pytest.raises(ValueError, match="no Sync"):
        BatchRenorm2d(3, nbs=16)(torch.randn(8, 3, 2, 2))
