"""The "10 ways" reachable from a config: norm=virtual, norm.update_stats=false (the GAN case), eval modes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnlab.config import validate
from bnlab.config_errors import ConfigError
from bnlab.data import build_data
from bnlab.models import build_model
from bnlab.norm import BatchNorm2d, attach_norm_inputs, build_norm, no_stats_update, virtual_bn
from bnlab.norm.virtual import reference_batch
from bnlab.train.evaluate import EVAL_MODES

TOL = {"rtol": 1e-10, "atol": 1e-10}


def _net(norm) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), norm(4), nn.ReLU(), nn.Conv2d(4, 4, 3), norm(4)).double()


def test_norm_virtual_from_config_runs_the_reference_batch_on_every_training_step(tiny_cfg):
    cfg = tiny_cfg("norm=virtual", "norm.reference_size=24")
    validate(cfg)
    data = build_data(cfg)
    model = build_model(cfg.model, build_norm(cfg.norm), data.in_channels, data.num_classes)
    attach_norm_inputs(model, cfg, data)
    reference = reference_batch(data.train, 24, 0)
    assert torch.equal(model._virtual_reference, reference) and reference.shape == (24, 1, 28, 28)
    x, _ = next(iter(data.train))
    twin = build_model(cfg.model, build_norm(cfg.norm), data.in_channels, data.num_classes)
    twin.load_state_dict(model.state_dict())
    y = model(x)  # a training step: the hook enters virtual_bn itself
    with virtual_bn(twin, reference):  # the explicit form, the oracle
        y_ref = twin(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    assert all(m.virtual is None for m in model.modules() if isinstance(m, BatchNorm2d))  # cleaned up after
    for a, b in zip(model.buffers(), twin.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # the same EMA of batch + reference statistics
    with torch.no_grad():  # no gradients = not a training step (batch-mode eval, Precise BN): plain statistics
        plain = model(x)
    assert not torch.allclose(plain, y, atol=1e-3)


def test_virtual_hook_matches_virtual_bn_in_float64():
    model, twin = _net(lambda c: BatchNorm2d(c)), _net(lambda c: BatchNorm2d(c))
    ref, x = torch.randn(8, 1, 6, 6, dtype=torch.float64), torch.randn(4, 1, 6, 6, dtype=torch.float64) + 1
    from bnlab.norm import attach_reference_batch

    attach_reference_batch(model, ref)
    y = model(x)
    with virtual_bn(twin, ref):
        y_ref = twin(x)
    torch.testing.assert_close(y, y_ref, **TOL)
    y.sum().backward(), y_ref.sum().backward()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, **TOL)
    model.eval()
    torch.testing.assert_close(model(x), twin.eval()(x), **TOL)  # eval: running statistics, no reference pass


def test_virtual_config_errors_name_the_key(tiny_cfg):
    with pytest.raises(ConfigError, match="norm.reference_size"):
        validate(tiny_cfg("norm=virtual", "norm.reference_size=0"))


def test_gan_style_fake_batches_never_enter_the_ema():
    """Wu's slide: D(real, training=True); D(fake, training=True, update_ema=False); D(fake, training=False)."""
    disc, real_only = _net(lambda c: BatchNorm2d(c)), _net(lambda c: BatchNorm2d(c))
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        real = torch.randn(8, 1, 6, 6, generator=g, dtype=torch.float64)
        fake = 3 + 2 * torch.randn(8, 1, 6, 6, generator=g, dtype=torch.float64)  # another distribution
        disc(real)
        real_only(real)
        with no_stats_update(disc):
            y_fake = disc(fake)
        # the fake batch is still normalized by its own statistics (a training-mode forward)
        h = F.relu(F.batch_norm(disc[0](fake), None, None, disc[1].weight, disc[1].bias, True))
        y_oracle = F.batch_norm(disc[3](h), None, None, disc[4].weight, disc[4].bias, True)
        torch.testing.assert_close(y_fake, y_oracle, **TOL)
    for (name, a), b in zip(disc.named_buffers(), real_only.buffers()):
        torch.testing.assert_close(a, b, **TOL, msg=name)  # EMA and step count: the real batches' only
    disc.eval(), real_only.eval()
    torch.testing.assert_close(disc(fake), real_only(fake), **TOL)  # D(fake, training=False) uses the real EMA


def test_update_stats_false_from_config_builds_layers_that_keep_their_ema(tiny_cfg):
    cfg = tiny_cfg("norm.update_stats=false")
    layer = build_norm(cfg.norm)(4)
    assert isinstance(layer, BatchNorm2d) and not layer.update_stats
    layer(torch.randn(8, 4, 3, 3) * 5 + 2)
    assert torch.equal(layer.running_mean, torch.zeros(4)) and int(layer.num_batches_tracked) == 0


def test_eval_modes_accept_the_four_statistics_choices(tiny_cfg):
    assert {"running", "precise", "adaptive", "batch"} <= set(EVAL_MODES)  # (+ ema_frozen, the EMA-bias probe)
    validate(tiny_cfg("eval.modes=[running,precise,adaptive,batch]"))
    with pytest.raises(ConfigError, match="eval.modes"):
        validate(tiny_cfg("eval.modes=[ema]"))
