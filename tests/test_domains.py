"""Domains as data: the shifted target domain, domain ids per sample, and Separate BN fed by them."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from omegaconf import open_dict
from torch import nn

from bnlab.config import validate
from bnlab.config_errors import ConfigError
from bnlab.data import build_data
from bnlab.data.domains import SOURCE, TARGET, shift_images
from bnlab.norm import SeparateBatchNorm2d, route_domains, use_domain
from bnlab.runner import run
from bnlab.train.checkpoint import load_checkpoint
from bnlab.train.run_dir import RunDir, run_id

TOL = {"rtol": 1e-10, "atol": 1e-10}


def test_shift_is_the_documented_formula_and_deterministic():
    x = torch.arange(0, 256, dtype=torch.uint8).view(1, 1, 16, 16)
    plain = shift_images(x, 0.5, 100.0, 0.0, 0)
    expected = (x.double() * 0.5 + 100).round().clamp(0, 255).to(torch.uint8)
    assert torch.equal(plain, expected) and plain.dtype == torch.uint8
    noisy = shift_images(x, 0.5, 100.0, 16.0, 0)
    assert torch.equal(noisy, shift_images(x, 0.5, 100.0, 16.0, 0))  # the same target images every time
    assert not torch.equal(noisy, shift_images(x, 0.5, 100.0, 16.0, 1))
    assert 8 < (noisy.float() - plain.float()).std() < 24


def test_data_with_domains_yields_ids_and_a_shifted_target_set(tiny_cfg):
    cfg = tiny_cfg("domains=shifted", "domains.train_on=mixed")
    validate(cfg)
    data = build_data(cfg)
    d = cfg.domains
    assert torch.equal(
        data.target_val.images, shift_images(data.val.images, d.contrast, d.brightness, d.noise_std, d.noise_seed)
    )
    x, y, ids = next(iter(data.val))
    assert (ids == SOURCE).all() and len(ids) == len(y) == len(x)
    assert all((ids == TARGET).all() for _, _, ids in data.target_val)
    # mixed training: a seeded half of the images replaced by their target version, ids say which
    ids = data.train.domain_ids
    assert 0.4 < ids.float().mean() < 0.6 and data.info["domains"]["n_target_train"] == int(ids.sum())
    source = build_data(tiny_cfg())
    shifted = shift_images(source.train.images, d.contrast, d.brightness, d.noise_std, d.noise_seed)
    assert torch.equal(data.train.images[ids == 1], shifted[ids == 1])
    assert torch.equal(data.train.images[ids == 0], source.train.images[ids == 0])
    torch.testing.assert_close(data.train.mean, source.train.mean)  # source preprocessing for every domain
    _, _, batch_ids = next(iter(data.train))
    assert 0 < batch_ids.sum() < len(batch_ids)  # mixed-domain batches
    assert len(next(iter(build_data(tiny_cfg("domains=shifted")).train))) == 2  # train_on=source: (x, y)


def test_separate_bn_normalizes_each_domain_of_a_mixed_batch_by_its_own_statistics():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 3, 4, 4, generator=g, dtype=torch.float64)
    ids = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 1, 1])
    x[ids == 1] = 3 * x[ids == 1] + 5  # the target domain: another distribution
    layer = SeparateBatchNorm2d(3, num_domains=2, momentum=0.1).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
    xa = x.clone().requires_grad_()
    y = layer(xa, ids)
    xb = x.clone().requires_grad_()
    expected = torch.zeros_like(x)
    for d in (0, 1):
        rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        expected[ids == d] = F.batch_norm(xb[ids == d], rm, rv, layer.weight, layer.bias, True, 0.1, 1e-5)
        torch.testing.assert_close(layer.domains[d].running_mean, rm, **TOL)  # its own EMA, its samples only
        torch.testing.assert_close(layer.domains[d].running_var, rv, **TOL)
        assert int(layer.domains[d].num_batches_tracked) == 1
    torch.testing.assert_close(y, expected, **TOL)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad(y, xa, gy)[0], torch.autograd.grad(expected, xb, gy)[0], **TOL)
    layer.eval()  # evaluation: each sample with its domain's running statistics
    for d in (0, 1):
        torch.testing.assert_close(layer(x, ids)[ids == d], layer(x[ids == d], domain=d), **TOL)
    with pytest.raises(ValueError, match="out of range"):
        layer(x, torch.full((10,), 2))


def test_route_domains_hands_the_ids_to_every_separate_layer_and_shared_bn_ignores_them():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), SeparateBatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), SeparateBatchNorm2d(4)
    )
    route_domains(net.double())
    x, ids = torch.randn(6, 1, 7, 7, dtype=torch.float64), torch.tensor([0, 0, 0, 1, 1, 1])
    twin = copy.deepcopy(net)
    y = net(x, ids)
    assert all(m.batch_domains is None for m in net.modules() if isinstance(m, SeparateBatchNorm2d))  # per call
    with use_domain(twin, 0):
        y0 = twin(x[:3])
    with use_domain(twin, 1):
        y1 = twin(x[3:])
    torch.testing.assert_close(y, torch.cat([y0, y1]), **TOL)
    torch.testing.assert_close(dict(net.named_buffers()), dict(twin.named_buffers()), **TOL)
    shared = route_domains(nn.Sequential(nn.BatchNorm2d(1)).double())
    torch.testing.assert_close(shared(x, ids), shared(x), **TOL)


def test_separate_bn_run_on_mixed_domains_trains_both_domains_statistics(tiny_cfg):
    cfg = tiny_cfg("norm=separate", "domains=shifted", "domains.train_on=mixed", "train.epochs=1")
    with open_dict(cfg):
        cfg.data.train_subset, cfg.eval.modes, cfg.health.enabled = 256, ["running"], False
    summary = run(cfg)
    assert summary["status"] == "completed"
    for key in ("val_err_running", "target_err_running", "target_loss_running"):
        assert key in summary["final"]
    state = load_checkpoint(RunDir.for_config(cfg).checkpoint)["model"]
    steps = [int(state[f"stem.1.domains.{d}.num_batches_tracked"]) for d in (0, 1)]
    assert steps == [4, 4]  # every mixed batch of 64 holds both domains
    assert (state["stem.1.domains.1.running_mean"] - state["stem.1.domains.0.running_mean"]).abs().max() > 0.1


def test_domain_config_errors_and_unchanged_hashes(tiny_cfg):
    with pytest.raises(ConfigError, match="domains.train_on"):
        validate(tiny_cfg("domains=shifted", "domains.train_on=both"))
    with pytest.raises(ConfigError, match="eval.modes"):
        validate(tiny_cfg("norm=separate", "eval.modes=[running,adaptive]"))
    cfg, old = tiny_cfg(), tiny_cfg()
    with open_dict(old):
        del old["domains"]  # a config from before domains existed
    assert run_id(cfg) == run_id(old) != run_id(tiny_cfg("domains=shifted"))
