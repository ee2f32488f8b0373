"""bnlab BatchNorm2d against PyTorch's own layers: plain BN, Ghost BN (both layouts), statistics options."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bnlab.norm import BatchNorm2d, no_stats_update

TOL = {"atol": 1e-12, "rtol": 1e-10}


def _data(b=16, c=3, hw=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, hw, hw, generator=g, dtype=torch.float64) * 2 + 0.5
    return x, torch.randn(b, c, hw, hw, generator=g, dtype=torch.float64)


def _affine(*layers):
    """Same random weight and bias in every layer (not the 1/0 defaults, so affine bugs show)."""
    g = torch.Generator().manual_seed(1)
    c = layers[0].num_features
    w, b = torch.rand(c, generator=g, dtype=torch.float64) + 0.5, torch.randn(c, generator=g, dtype=torch.float64)
    with torch.no_grad():
        for m in layers:
            m.weight.copy_(w)
            m.bias.copy_(b)


def _step(layer, x, gy):
    x = x.clone().requires_grad_()
    y = layer(x)
    y.backward(gy)
    return y.detach(), x.grad, layer.weight.grad.clone(), layer.bias.grad.clone()


def test_plain_equals_nn_batchnorm_train_grads_running_stats_and_eval():
    ours, ref = BatchNorm2d(3, momentum=0.2).double(), nn.BatchNorm2d(3, momentum=0.2).double()
    _affine(ours, ref)
    for step in range(4):
        x, gy = _data(seed=step)
        ours.zero_grad()
        ref.zero_grad()
        for a, b in zip(_step(ours, x, gy), _step(ref, x, gy)):
            torch.testing.assert_close(a, b, **TOL)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, **TOL)
    assert int(ours.num_batches_tracked) == 4
    ours.eval(), ref.eval()
    x, _ = _data(seed=9)
    torch.testing.assert_close(ours(x), ref(x), **TOL)


def test_plain_cumulative_momentum_none_matches_pytorch():
    ours, ref = BatchNorm2d(3, momentum=None).double(), nn.BatchNorm2d(3, momentum=None).double()
    for step in range(3):
        x, _ = _data(seed=step)
        ours(x), ref(x)
    torch.testing.assert_close(ours.running_var, ref.running_var, **TOL)
    torch.testing.assert_close(ours.running_mean, ref.running_mean, **TOL)


def test_cumulative_average_follows_a_count_set_from_outside():
    """momentum=None keeps its batch count on the host (norm/batch_count.py); a reset, a loaded state dict or a write
    into the buffer is seen at the next step, as nn.BatchNorm2d sees it."""
    ours, ref = BatchNorm2d(3, momentum=None).double(), nn.BatchNorm2d(3, momentum=None).double()
    for step in range(6):
        x, _ = _data(seed=step)
        ours(x), ref(x)
        if step == 1:
            ours.reset_running_stats(), ref.reset_running_stats()
        if step == 2:
            state = {k: v.clone() for k, v in ref.state_dict().items()}
            state["num_batches_tracked"].fill_(7)
            ours.load_state_dict(state), ref.load_state_dict(state)
        if step == 3:
            ours.num_batches_tracked.fill_(2), ref.num_batches_tracked.fill_(2)
        torch.testing.assert_close(ours.running_mean, ref.running_mean, **TOL)
        torch.testing.assert_close(ours.running_var, ref.running_var, **TOL)
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 4


def _ghost_groups(b, nbs, layout):
    groups = b // nbs
    if layout == "contiguous":
        return [torch.arange(g * nbs, (g + 1) * nbs) for g in range(groups)]
    return [torch.arange(g, b, groups) for g in range(groups)]


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_ghost_equals_loop_of_nn_batchnorm_over_groups(layout, fmt, ghost_path):
    b, nbs = 16, 4
    ours = BatchNorm2d(3, momentum=0.3, nbs=nbs, ghost_layout=layout).double()
    base = nn.BatchNorm2d(3, momentum=0.3).double()
    _affine(ours, base)
    # one nn.BatchNorm2d per group, sharing weight and bias; the ghost EMA is the average of their EMAs
    refs = [copy.deepcopy(base) for _ in range(b // nbs)]
    for r in refs:
        r.weight, r.bias = base.weight, base.bias
    for step in range(3):
        x, gy = (t.contiguous(memory_format=fmt) for t in _data(b=b, seed=step))
        ours.zero_grad(), base.zero_grad()
        y, gx, gw, gb = _step(ours, x, gy)
        assert y.is_contiguous(memory_format=fmt) and gx.is_contiguous(memory_format=fmt)
        xr = x.clone().requires_grad_()
        y_ref = torch.empty_like(x)
        for r, idx in zip(refs, _ghost_groups(b, nbs, layout)):
            y_g = r(xr[idx])
            y_ref[idx] = y_g.detach()
            y_g.backward(gy[idx])
        torch.testing.assert_close(y, y_ref, **TOL)
        torch.testing.assert_close(gx, xr.grad, **TOL)
        torch.testing.assert_close(gw, base.weight.grad, **TOL)
        torch.testing.assert_close(gb, base.bias.grad, **TOL)
        mean = torch.stack([r.running_mean for r in refs]).mean(0)
        var = torch.stack([r.running_var for r in refs]).mean(0)
        torch.testing.assert_close(ours.running_mean, mean, **TOL)
        torch.testing.assert_close(ours.running_var, var, **TOL)
        for r in refs:  # the groups share one EMA
            r.running_mean.copy_(mean), r.running_var.copy_(var)
    # the two layouts really group differently
    other = "strided" if layout == "contiguous" else "contiguous"
    alt = BatchNorm2d(3, nbs=nbs, ghost_layout=other).double()
    x, _ = _data(b=b)
    assert not torch.allclose(alt(x), BatchNorm2d(3, nbs=nbs, ghost_layout=layout).double()(x))


def test_ghost_nbs_equal_to_batch_is_plain_and_channels_last_is_kept():
    x, _ = _data(b=8)
    torch.testing.assert_close(BatchNorm2d(3, nbs=8).double()(x), nn.BatchNorm2d(3).double()(x), **TOL)
    xc = x.contiguous(memory_format=torch.channels_last)
    y = BatchNorm2d(3, nbs=2).double()(xc)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, BatchNorm2d(3, nbs=2).double()(x), **TOL)


def test_train_stats_running_normalizes_with_ema_and_still_updates_it():
    ours = BatchNorm2d(3, train_stats="running").double()
    ref = nn.BatchNorm2d(3).double()
    _affine(ours, ref)
    with torch.no_grad():
        for m in (ours, ref):
            m.running_mean.fill_(0.3), m.running_var.fill_(2.0)
    x, _ = _data()
    y = ours(x)  # training mode, running statistics (before this step's update)
    ref.eval()
    torch.testing.assert_close(y, ref(x), **TOL)
    ref.train()
    ref(x)  # the EMA follows the batch exactly as nn.BatchNorm2d's
    torch.testing.assert_close(ours.running_mean, ref.running_mean, **TOL)
    torch.testing.assert_close(ours.running_var, ref.running_var, **TOL)


def test_update_stats_false_uses_batch_stats_without_touching_ema():
    layer = BatchNorm2d(3, update_stats=False).double()
    x, _ = _data()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    torch.testing.assert_close(layer(x), nn.BatchNorm2d(3).double()(x), **TOL)
    assert all(torch.equal(before[k], v) for k, v in layer.state_dict().items())
    model = nn.Sequential(BatchNorm2d(3).double())
    with no_stats_update(model):  # e.g. a GAN discriminator on a fake batch
        model(x)
    assert int(model[0].num_batches_tracked) == 0 and model[0].update_stats
    model(x)
    assert int(model[0].num_batches_tracked) == 1


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
def test_ghost_without_affine_or_ema_and_cumulative_momentum_match_the_group_loop(layout, fmt, ghost_path):
    """The other arguments of the fused Ghost kernels: no affine, no EMA update, momentum=None, no input grad."""
    x, gy = (t.contiguous(memory_format=fmt) for t in _data(b=12, seed=3))
    groups = _ghost_groups(12, 4, layout)
    for kwargs in ({"affine": False}, {"update_stats": False}, {"momentum": None}):
        ours = BatchNorm2d(3, nbs=4, ghost_layout=layout, **kwargs).double()
        ref = nn.BatchNorm2d(3, affine=kwargs.get("affine", True), momentum=kwargs.get("momentum", 0.1)).double()
        xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        y = ours(xo)
        y.backward(gy)
        y_ref = torch.empty_like(x)
        means, vars_ = [], []
        for idx in groups:
            r = copy.deepcopy(ref)
            y_g = r(xr[idx])
            y_ref[idx] = y_g.detach()
            y_g.backward(gy[idx])
            means.append(r.running_mean), vars_.append(r.running_var)
        torch.testing.assert_close(y, y_ref, **TOL)
        torch.testing.assert_close(xo.grad, xr.grad, **TOL)
        if kwargs.get("update_stats", True):
            torch.testing.assert_close(ours.running_mean, torch.stack(means).mean(0), **TOL)
            torch.testing.assert_close(ours.running_var, torch.stack(vars_).mean(0), **TOL)
        else:
            assert torch.equal(ours.running_mean, torch.zeros(3, dtype=torch.float64))
    # parameters only (a frozen input): the input gradient is not computed
    layer = BatchNorm2d(3, nbs=4, ghost_layout=layout).double()
    layer(x).backward(gy)
    assert layer.weight.grad is not None and layer.bias.grad is not None


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_statistics_are_float32_under_bf16_autocast(layout, ghost_path):
    x = torch.randn(8, 4, 6, 6) * 3 + 100  # large mean: bf16 sums would lose it
    layer = BatchNorm2d(4, nbs=4, ghost_layout=layout)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x.bfloat16())
    assert y.dtype == torch.bfloat16 and layer.running_mean.dtype == torch.float32
    ref = BatchNorm2d(4, nbs=4, ghost_layout=layout)
    ref(x.bfloat16().float())
    torch.testing.assert_close(layer.running_mean, ref.running_mean, atol=1e-3, rtol=1e-4)


def test_state_dict_interchangeable_with_nn_batchnorm():
    ref = nn.BatchNorm2d(5)
    ref(torch.randn(4, 5, 3, 3))
    ours = BatchNorm2d(5, nbs=2)
    ours.load_state_dict(ref.state_dict())
    back = nn.BatchNorm2d(5)
    back.load_state_dict(ours.state_dict())
    assert all(torch.equal(ref.state_dict()[k], v) for k, v in back.state_dict().items())


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match=r"nbs=3 does not divide the batch size 8"):
        BatchNorm2d(3, nbs=3)(torch.randn(8, 3, 2, 2))
    with pytest.raises(RuntimeError, match=r"nbs=16 is larger than the per-device batch of 8.*torch.distributed"):
        BatchNorm2d(3, nbs=16)(torch.randn(8, 3, 2, 2))
    with pytest.raises(ValueError, match="ghost_layout"):
        BatchNorm2d(3, ghost_layout="interleaved")
    with pytest.raises(ValueError, match="train_stats"):
        BatchNorm2d(3, train_stats="ema")
    with pytest.raises(ValueError, match="nbs must be a positive integer"):
        BatchNorm2d(3, nbs=0)


def test_ghost_kernel_path_follows_group_size(monkeypatch):
    """Large groups take the group loop, small ones (and free views, strided NCHW) the one-call channels trick;
    and the path chosen is the path run."""
    from bnlab.norm import ghost

    big, cl = torch.empty(128, 64, 32, 32), torch.empty(128, 64, 32, 32).contiguous(memory_format=torch.channels_last)
    assert not ghost.use_channels_trick(big, "contiguous", 8)  # 16 x 64 x 32 x 32 = 1M elements a group
    assert not ghost.use_channels_trick(cl, "strided", 8)
    assert ghost.use_channels_trick(big, "strided", 8)  # a free view
    assert ghost.use_channels_trick(torch.empty(128, 16, 14, 14), "contiguous", 64)  # 2 x 16 x 14 x 14 = 6272
    calls = []
    monkeypatch.setattr(ghost.GhostBatchNormFn, "apply", lambda *a: calls.append(1) or a[0].clone())
    BatchNorm2d(64, nbs=16)(big.normal_())
    BatchNorm2d(16, nbs=2)(torch.randn(128, 16, 14, 14))
    assert calls == [1]
