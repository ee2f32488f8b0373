"""What bnlab asks of a norm layer (norm/layer.py): one "is a BN layer" predicate that every consumer agrees on,
and a layer that registers itself from its own file."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bnlab.config import validate
from bnlab.config_errors import ConfigError
from bnlab.diagnostics.health import bn_layers
from bnlab.norm import (
    NORMS,
    BatchNorm2d,
    BatchRenorm2d,
    FrozenBatchNorm2d,
    NormLayer,
    SeparateBatchNorm2d,
    batchnorm_layers,
    freeze_batchnorm,
    frozen_ema,
    has_running_stats,
    is_batchnorm,
    precise_bn,
)
from bnlab.norm.group import GroupNorm
from bnlab.norm.layer import LAYERS
from conftest import compose_cfg

# (layer, is a BN layer, has running statistics)
CASES = [
    (nn.BatchNorm2d(4), True, True),
    (nn.BatchNorm2d(4, track_running_stats=False), False, False),
    (BatchNorm2d(4, nbs=2), True, True),
    (BatchRenorm2d(4), True, True),
    (SeparateBatchNorm2d(4), True, True),  # a BN layer through its active domain's statistics
    (FrozenBatchNorm2d(4), False, True),  # constant statistics: nothing to recompute, replay or freeze
    (GroupNorm(2, 4), False, False),
    (nn.GroupNorm(2, 4), False, False),
    (nn.Identity(), False, False),
]


def _name(v) -> str:
    return type(v).__name__ if isinstance(v, nn.Module) else ""


@pytest.mark.parametrize("layer, bn, running", CASES, ids=_name)
def test_one_predicate_says_what_a_bn_layer_is(layer, bn, running):
    assert is_batchnorm(layer) is bn
    assert has_running_stats(layer) is running


def _mixed() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        SeparateBatchNorm2d(4),
        BatchRenorm2d(4, warmup_steps=0, r_max_full_at=0, d_max_full_at=0),
        FrozenBatchNorm2d(4),
        nn.GroupNorm(2, 4),
    )


def test_precise_bn_frozen_ema_freezing_and_health_agree_on_the_bn_layers():
    """Separate BN counts everywhere (its active domain); Frozen BN is watched by the health monitor only."""
    model, x = _mixed(), torch.randn(16, 3, 5, 5)
    expected = [model[1], model[2], model[3]]
    assert batchnorm_layers(model) == expected
    watched = [m for _, m in bn_layers(model)]
    # the health monitor also lists Separate BN's per-domain buffer holders (duck-typed foreign modules with
    # running_mean/var), as it always has: its health/* figures of Separate BN runs stay what they were
    assert [m for m in watched if type(m).__name__ != "DomainStats"] == [*expected, model[4]]

    recomputed = copy.deepcopy(model)
    precise_bn(recomputed, [x])
    changed = [i for i in (1, 2, 3, 4) if not torch.equal(recomputed[i].running_mean, model[i].running_mean)]
    assert changed == [1, 2, 3]

    replayed = copy.deepcopy(model)
    assert frozen_ema(replayed, [x], steps=2) == 2
    assert [int(replayed[i].num_batches_tracked) for i in (1, 2, 3)] == [2, 2, 2]

    frozen = freeze_batchnorm(copy.deepcopy(model))
    assert [type(m).__name__ for m in frozen] == ["Conv2d", *["FrozenBatchNorm2d"] * 4, "GroupNorm"]


def test_every_config_name_is_a_registered_layer_class_with_its_own_check():
    assert set(NORMS) == set(LAYERS)
    for name, cls in LAYERS.items():
        assert issubclass(cls, NormLayer) and cls.config_name == name
        validate(compose_cfg([f"norm={name}"]))


def test_a_new_norm_is_its_class_alone():
    """A NormLayer subclass with a config_name is buildable and checked by name, with no other file touched."""

    class Scaled(nn.Module, NormLayer, config_name="scaled_test"):
        def __init__(self, num_features: int, scale: float):
            super().__init__()
            self.scale = scale

        @classmethod
        def check_config(cls, cfg) -> None:
            if cfg.norm.scale <= 0:
                raise ConfigError("norm.scale", "must be > 0")

        def forward(self, x):
            return x * self.scale

    try:
        assert NORMS.build({"name": "scaled_test", "scale": 2.0}, num_features=3).scale == 2.0
        cfg = compose_cfg([])
        cfg.norm = {"name": "scaled_test", "scale": -1.0}
        with pytest.raises(ConfigError, match="norm.scale"):
            validate(cfg)
    finally:
        NORMS.pop("scaled_test")
        LAYERS.pop("scaled_test")
