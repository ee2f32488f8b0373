"""Frozen, Separate and Virtual BN: behaviour, state_dict round trips, and use as torchvision's norm_layer."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from bnlab.norm import (
    BatchNorm2d,
    BatchRenorm2d,
    FrozenBatchNorm2d,
    SeparateBatchNorm2d,
    freeze_batchnorm,
    use_domain,
    virtual_bn,
)

TOL = {"atol": 1e-12, "rtol": 1e-10}


def _x(b=8, c=3, seed=0, shift=0.0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, 5, 5, generator=g, dtype=torch.float64) * scale + shift


def _trained_bn(c=3):
    bn = nn.BatchNorm2d(c).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-1, 1)
    for s in range(3):
        bn(_x(c=c, seed=s, shift=2.0, scale=3.0))
    return bn.eval()


# ---- Frozen BN ----


def test_frozen_is_the_eval_affine_in_train_and_eval_and_never_updates():
    bn = _trained_bn()
    frozen = FrozenBatchNorm2d.from_batchnorm(bn)
    x = _x(seed=7)
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    for training in (True, False):
        frozen.train(training)
        torch.testing.assert_close(frozen(x), bn(x), **TOL)
    assert all(torch.equal(before[k], v) for k, v in frozen.state_dict().items())
    assert list(frozen.parameters()) == []  # constant affine by default
    assert set(frozen.state_dict()) == {"weight", "bias", "running_mean", "running_var"}


def test_frozen_loads_a_batchnorm_state_dict_and_round_trips():
    bn = _trained_bn()
    frozen = FrozenBatchNorm2d(3).double()
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked is dropped, not an error
    again = FrozenBatchNorm2d(3).double()
    again.load_state_dict(frozen.state_dict())
    x = _x(seed=3)
    torch.testing.assert_close(again(x), bn(x), **TOL)
    trainable = FrozenBatchNorm2d(3, trainable_affine=True)
    assert {n for n, _ in trainable.named_parameters()} == {"weight", "bias"}


def test_freeze_batchnorm_converts_every_bn_and_keeps_the_eval_function():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.Conv2d(4, 4, 3), BatchNorm2d(4)), BatchRenorm2d(4)
    ).double()
    model.train()
    for s in range(3):
        model(_x(seed=s, shift=1.0))
    model.eval()
    x = _x(seed=9)
    expected = model(x)
    frozen = freeze_batchnorm(copy.deepcopy(model))
    kinds = [type(m) for m in frozen.modules()]
    assert kinds.count(FrozenBatchNorm2d) == 3 and nn.BatchNorm2d not in kinds
    frozen.train()  # train mode makes no difference any more
    torch.testing.assert_close(frozen(x), expected, **TOL)


# ---- Separate BN ----


def test_separate_keeps_statistics_per_domain_and_shares_the_affine():
    layer = SeparateBatchNorm2d(3, num_domains=2).double()
    src, tgt = _x(seed=1), _x(seed=2, shift=5.0, scale=2.0)
    ref_src, ref_tgt = nn.BatchNorm2d(3).double(), nn.BatchNorm2d(3).double()
    torch.testing.assert_close(layer(src), ref_src(src), **TOL)  # domain 0 by default
    torch.testing.assert_close(layer(tgt, domain=1), ref_tgt(tgt), **TOL)
    torch.testing.assert_close(layer.domains[0].running_mean, ref_src.running_mean, **TOL)
    torch.testing.assert_close(layer.domains[1].running_var, ref_tgt.running_var, **TOL)
    assert {n for n, _ in layer.named_parameters()} == {"weight", "bias"}
    assert set(layer.state_dict()) == {
        "weight",
        "bias",
        *(f"domains.{d}.{k}" for d in (0, 1) for k in ("running_mean", "running_var", "num_batches_tracked")),
    }
    layer.eval()
    model = nn.Sequential(layer)
    with use_domain(model, 1):  # for models whose forward does not pass the domain
        torch.testing.assert_close(model(tgt), ref_tgt.eval()(tgt), **TOL)
    torch.testing.assert_close(model(src), ref_src.eval()(src), **TOL)
    fresh = SeparateBatchNorm2d(3, num_domains=2).double().eval()
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(fresh(tgt, domain=1), layer(tgt, domain=1), **TOL)
    with pytest.raises(ValueError, match="domain 2 out of range"):
        layer(src, domain=2)


# ---- Virtual BN ----


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
def test_virtual_bn_normalizes_with_batch_plus_reference_and_no_gradient_into_reference(fmt):
    x, ref_batch, gy = (_x(b=4, seed=1), _x(b=6, seed=2, shift=1.0, scale=2.0), _x(b=4, seed=3))
    x, ref_batch, gy = (t.contiguous(memory_format=fmt) for t in (x, ref_batch, gy))
    layer = BatchNorm2d(3, momentum=0.2).double()
    bn = nn.BatchNorm2d(3, momentum=0.2).double()
    with torch.no_grad():
        for m in (layer, bn):
            m.weight.copy_(torch.tensor([0.5, 1.0, 2.0])), m.bias.copy_(torch.tensor([0.0, 0.3, -0.3]))
    model = nn.Sequential(layer)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    with virtual_bn(model, ref_batch):  # one extra forward of the reference batch here
        y = model(xa)
    # BN over (batch + reference) where the reference is a constant: the same forward and input gradient
    y_ref = bn(torch.cat([xb, ref_batch]))[:4]
    torch.testing.assert_close(y, y_ref, **TOL)
    y.backward(gy), y_ref.backward(gy)
    torch.testing.assert_close(xa.grad, xb.grad, **TOL)
    torch.testing.assert_close(layer.weight.grad, bn.weight.grad, **TOL)
    torch.testing.assert_close(layer.running_mean, bn.running_mean, **TOL)  # EMA of the combined statistics
    torch.testing.assert_close(layer.running_var, bn.running_var, **TOL)
    assert int(layer.num_batches_tracked) == 1 and layer.virtual is None  # the reference pass counts no step
    with torch.no_grad():  # after the block: plain batch statistics again, which differ from batch + reference
        y_plain = model(x)
        torch.testing.assert_close(y_plain, F.batch_norm(x, None, None, layer.weight, layer.bias, True), **TOL)
    assert not torch.allclose(y, y_plain, atol=1e-3)


def test_virtual_bn_refuses_ghost_layers():
    with (
        pytest.raises(ValueError, match="virtual_bn needs plain BatchNorm2d"),
        virtual_bn(nn.Sequential(BatchNorm2d(3, nbs=2)), torch.randn(4, 3, 2, 2)),
    ):
        pass


# ---- every layer as torchvision's norm_layer ----


@pytest.mark.parametrize(
    "norm_layer",
    [
        BatchNorm2d,
        partial(BatchNorm2d, nbs=2),
        partial(BatchNorm2d, nbs=2, ghost_layout="strided"),
        partial(BatchNorm2d, train_stats="running"),
        BatchRenorm2d,
        partial(BatchRenorm2d, nbs=2, warmup_steps=0, r_max_full_at=0, d_max_full_at=0),
        FrozenBatchNorm2d,
        partial(FrozenBatchNorm2d, trainable_affine=True),
        partial(SeparateBatchNorm2d, num_domains=2),
    ],
    ids=["bn", "ghost", "ghost-strided", "running", "brn", "brn-micro", "frozen", "frozen-affine", "separate"],
)
def test_works_as_torchvision_resnet_norm_layer(norm_layer):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5, norm_layer=norm_layer)
    x = torch.randn(4, 3, 16, 16)  # small: layer4 still sees 4 samples x 1 x 1 per channel
    loss = model(x).logsumexp(1).mean()
    loss.backward()
    assert torch.isfinite(loss) and model.conv1.weight.grad.abs().sum() > 0
    model.eval()
    assert torch.isfinite(model(x)).all()
    again = torchvision.models.resnet18(num_classes=5, norm_layer=norm_layer)
    again.load_state_dict(model.state_dict())  # state_dict round trip through the same class
