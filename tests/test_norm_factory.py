"""Config -> norm layers through the one factory; bad norm config fails before training; the real entry point."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bnlab.config import validate
from bnlab.config_errors import ConfigError
from bnlab.norm import NORMS, BatchNorm2d, BatchRenorm2d, FrozenBatchNorm2d, SeparateBatchNorm2d, build_norm
from bnlab.norm.layer import LAYERS
from bnlab.runner import run
from conftest import compose_cfg


@pytest.mark.parametrize(
    "overrides, cls",
    [
        (["norm=batch"], BatchNorm2d),
        (["norm=ghost"], BatchNorm2d),
        (["norm=renorm"], BatchRenorm2d),
        (["norm=frozen"], FrozenBatchNorm2d),
        (["norm=separate"], SeparateBatchNorm2d),
        (["norm=virtual"], BatchNorm2d),
        (["norm=group"], nn.GroupNorm),
        (["norm=instance"], nn.InstanceNorm2d),
        (["norm=layer"], nn.GroupNorm),
        (["norm=none"], nn.Identity),
    ],
)
def test_every_config_builds_its_layer(overrides, cls):
    """Each config name builds its registered class (norm/layer.py), a subclass of the torch layer it computes."""
    cfg = compose_cfg(overrides)
    layer = build_norm(cfg.norm)(16)
    assert type(layer) is LAYERS[cfg.norm.name] and isinstance(layer, cls)
    out = layer(torch.randn(32, 16, 3, 3))
    assert out.shape == (32, 16, 3, 3) and torch.isfinite(out).all()
    validate(cfg)


def test_config_values_reach_the_layers():
    ghost = build_norm(compose_cfg(["norm=ghost", "norm.ghost_layout=strided", "norm.momentum=0.05"]).norm)(8)
    assert (ghost.nbs, ghost.ghost_layout, ghost.momentum) == (16, "strided", 0.05)
    brn = build_norm(compose_cfg(["norm=renorm", "norm.nbs=4", "norm.r_max=2.0"]).norm)(8)
    assert (brn.nbs, brn.r_max, brn.d_max, brn.momentum, brn.warmup_steps) == (4, 2.0, 5.0, 0.01, 5000)
    assert build_norm(compose_cfg(["norm=separate", "norm.num_domains=3"]).norm)(8).num_domains == 3
    assert build_norm(compose_cfg(["norm=layer"]).norm)(8).num_groups == 1  # statistics over (C, H, W)
    assert set(NORMS) >= {"batch", "renorm", "frozen", "separate", "group", "instance", "layer", "none"}


def test_renorm_schedule_in_ema_time_constants():
    """renorm_tau.yaml is the paper's schedule (alpha 0.01: 5k / 25k / 40k steps) written as 50 / 250 / 400 tau."""
    paper, tau = (build_norm(compose_cfg([f"norm={n}"]).norm)(8) for n in ("renorm", "renorm_tau"))
    for layer in (paper, tau):
        assert (layer.momentum, layer.warmup_steps, layer.d_max_full_at, layer.r_max_full_at) == (
            0.01,
            5000,
            25000,
            40000,
        )
    cpu = build_norm(compose_cfg(["norm=renorm_tau_cpu"]).norm)(8)  # tau = 20 steps: 10 / 20 / 30 tau
    assert (cpu.momentum, cpu.warmup_steps, cpu.d_max_full_at, cpu.r_max_full_at) == (0.05, 200, 400, 600)
    gpu = build_norm(compose_cfg(["norm=renorm_tau_gpu"]).norm)(8)  # the paper's 50 / 250 / 400 tau at tau = 50
    assert (gpu.momentum, gpu.warmup_steps, gpu.d_max_full_at, gpu.r_max_full_at) == (0.02, 2500, 12500, 20000)
    limits = [tuple(float(v) for v in cpu.limits(s)) for s in (199, 200, 300, 400, 500, 600, 1000)]
    assert limits == [(1, 0), (1, 0), (1.5, 2.5), (2, 5), (2.5, 5), (3, 5), (3, 5)]


def test_schedule_unit_steps_keeps_existing_run_ids():
    from omegaconf import open_dict

    from bnlab.train.run_dir import run_id

    cfg = compose_cfg(["norm=renorm"])
    assert cfg.norm.schedule_unit == "steps"
    before = run_id(cfg)
    with open_dict(cfg):
        del cfg.norm["schedule_unit"]
    assert run_id(cfg) == before


@pytest.mark.parametrize(
    "overrides, key, hint",
    [
        (["norm.name=ghostbn"], "norm.name", "renorm"),
        (["norm.nbs=24"], "norm.nbs", "nbs=24 does not divide train.batch_size=64"),
        (["norm.nbs=16", "eval.batch_size=40"], "norm.nbs", "eval.batch_size=40"),
        (["norm.nbs=128"], "norm.nbs", "Sync BN over 2 processes"),
        (["norm.nbs=96"], "norm.nbs", "multiple"),
        (["norm.ghost_layout=interleaved", "norm.nbs=16"], "norm.ghost_layout", "strided"),
        (["norm.train_stats=ema"], "norm.train_stats", "running"),
        (["norm.momentum=1.5"], "norm.momentum", "(0, 1]"),
        (["norm=renorm", "norm.nbs=128"], "norm.nbs", "no Sync"),
        (["norm=renorm", "norm.r_max=0.5"], "norm.r_max", ">= 1"),
        (["norm=renorm", "norm.warmup_steps=-1"], "norm.warmup_steps", ">= 0"),
        (["norm=renorm", "norm.warmup_steps=2.5"], "norm.warmup_steps", "an integer"),
        (["norm=renorm", "norm.schedule_unit=epochs"], "norm.schedule_unit", "ema_tau"),
        (["norm=renorm_tau", "norm.d_max_full_at=-0.5"], "norm.d_max_full_at", "schedule_unit=ema_tau"),
        (["norm=separate", "norm.num_domains=0"], "norm.num_domains", "positive"),
        (["eval.precise_samples=0"], "eval.precise_samples", "positive"),
        (["eval.precise_samples=[512,0]"], "eval.precise_samples", "positive"),
        (["norm.nbs=32", "eval.modes=[precise]", "eval.precise_samples=80"], "eval.precise_samples", "of 16"),
        (["norm.nbs=32", "data.val_subset=200"], "norm.nbs", "last validation batch of 8"),
        (["norm.nbs=64", "data.val_subset=200"], "norm.nbs", "last validation batch of 8"),
    ],
)
def test_bad_norm_config_fails_before_training_naming_the_key(tiny_cfg, tmp_path, overrides, key, hint):
    with pytest.raises(ConfigError) as err:
        run(tiny_cfg(*overrides))
    assert f"'{key}'" in str(err.value) and hint in str(err.value), str(err.value)
    assert not (tmp_path / "runs").exists()


def _finite_metrics(summary, modes):
    final = summary["final"]
    for mode in modes:
        for k in ("loss", "err"):
            assert math.isfinite(final[f"val_{k}_{mode}"]), (mode, k)
    assert math.isfinite(final["train_loss"])


def test_training_entry_with_ghost_bn(tiny_cfg):
    summary = run(tiny_cfg("norm=ghost", "train.epochs=1"))
    assert summary["status"] == "completed"
    _finite_metrics(summary, ["running", "batch"])


def test_training_entry_with_batch_renorm_micro_batches(tiny_cfg):
    summary = run(tiny_cfg("norm=renorm", "norm.nbs=16", "norm.warmup_steps=2", "norm.r_max_full_at=6",
                           "norm.d_max_full_at=4", "train.epochs=1"))  # fmt: skip
    assert summary["status"] == "completed"
    _finite_metrics(summary, ["running", "batch"])


def test_training_entry_with_precise_and_adaptive_evaluation(tiny_cfg):
    summary = run(tiny_cfg("eval.modes=[running,precise,adaptive]", "eval.precise_samples=256", "train.epochs=1"))
    assert summary["status"] == "completed"
    _finite_metrics(summary, ["running", "precise", "adaptive"])
    final = summary["final"]
    assert final["val_loss_precise"] != final["val_loss_running"]  # other statistics, other loss
