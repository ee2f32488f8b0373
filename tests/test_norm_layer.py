"""What bnlab asks of a norm layer (norm/layer.py): one "is a BN layer" predicate that every consumer agrees on,
and a layer that registers itself from its own file."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from bnlab import CONF_DIR
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


# --- the contract under subclassing, and every registered norm through build, freeze, Precise BN, stacking -----
def test_a_from_config_that_forwards_kwargs_accepts_the_class_keys():
    """The registry follows `from_config(cls, *args, **kwargs)` to the class's own keyword arguments."""

    class Forwarding(BatchNorm2d, config_name="forwarding_test"):
        @classmethod
        def from_config(cls, *args, **kwargs):
            return cls(*args, **kwargs)

    try:
        layer = NORMS.build({"name": "forwarding_test", "momentum": 0.2, "eps": 1e-3}, num_features=3)
        assert isinstance(layer, Forwarding) and (layer.momentum, layer.eps) == (0.2, 1e-3)
        with pytest.raises(ConfigError, match="norm.momentm"):
            NORMS.check({"name": "forwarding_test", "momentm": 0.2})
    finally:
        NORMS.pop("forwarding_test")
        LAYERS.pop("forwarding_test")


def test_a_batchnorm_subclass_with_fewer_keys_passes_the_inherited_check():
    """BatchNorm2d.check_config checks the keys the config holds, not every key BatchNorm2d's YAML has."""

    class Plain(BatchNorm2d, config_name="plain_test"):
        def __init__(self, num_features: int, eps: float = 1e-5, device=None, dtype=None):
            super().__init__(num_features, eps, device=device, dtype=dtype)

    try:
        cfg = compose_cfg([])
        cfg.norm = {"name": "plain_test", "eps": 1e-4}
        validate(cfg)
        cfg.norm = {"name": "plain_test", "eps": 0}
        with pytest.raises(ConfigError, match=r"'norm.eps': must be a number > 0, got 0"):
            validate(cfg)
    finally:
        NORMS.pop("plain_test")
        LAYERS.pop("plain_test")


class _Shifted(nn.BatchNorm2d):
    """A BN subclass whose forward adds to BN's output: Frozen BN would drop the shift."""

    def forward(self, x):
        return super().forward(x) + 1.0


class _ShiftedThatFreezes(_Shifted):
    def frozen(self, trainable_affine: bool = False) -> nn.Module:
        return nn.Sequential(FrozenBatchNorm2d.from_batchnorm(self, trainable_affine), _AddOne())


class _AddOne(nn.Module):
    def forward(self, x):
        return x + 1.0


def test_freezing_refuses_a_layer_whose_forward_it_cannot_reproduce():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), _Shifted(4))
    with pytest.raises(TypeError, match="_Shifted overrides forward .* define frozen"):
        freeze_batchnorm(model)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), _ShiftedThatFreezes(4)).eval()
    x = torch.randn(2, 3, 5, 5)
    expected = model(x)
    frozen = freeze_batchnorm(copy.deepcopy(model))
    torch.testing.assert_close(frozen(x), expected)  # its own frozen(): the shift is kept


NORM_FILES = sorted(p.stem for p in (Path(CONF_DIR) / "norm").glob("*.yaml"))


def _tiny(norm_cfg, seed: int) -> nn.Module:
    from bnlab.norm.factory import build_norm

    torch.manual_seed(seed)
    norm = build_norm(norm_cfg)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), norm(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    ).double()


@pytest.mark.parametrize("name", NORM_FILES)
def test_every_registered_norm_builds_freezes_recomputes_and_stacks(name):
    """Each conf/norm file, composed as `norm=<file>`, through build, Precise BN, freezing and stacked runs."""
    from bnlab.norm.layer import why_not_stackable
    from bnlab.train.stacked import StackedModels, StackingError

    norm_cfg = compose_cfg([f"norm={name}"]).norm
    assert norm_cfg.name in NORMS and norm_cfg.name in LAYERS  # every conf/norm file names a registered layer
    x = torch.randn(2, 16, 3, 6, 6, dtype=torch.float64)
    model = _tiny(norm_cfg, 0).train()
    assert model(x[0]).shape == (16, 2)  # built from its YAML, trains

    layer = model[1]
    recomputed = copy.deepcopy(model)
    assert precise_bn(recomputed, [x[0], x[1]]) == 32
    if is_batchnorm(layer):  # Precise BN set its statistics to the batches' population ones
        assert not torch.equal(recomputed[1].running_var, layer.running_var)
    else:  # nothing to recompute: the layer is untouched
        assert all(torch.equal(a, b) for a, b in zip(recomputed.state_dict().values(), model.state_dict().values()))

    frozen = freeze_batchnorm(copy.deepcopy(model)).eval()
    if is_batchnorm(layer):  # Frozen BN computes what the layer computes in eval mode, in training mode too
        assert isinstance(frozen[1], FrozenBatchNorm2d)
        torch.testing.assert_close(frozen.train()(x[0]), copy.deepcopy(model).eval()(x[0]))
    else:
        assert type(frozen[1]) is type(layer)

    reason = why_not_stackable(layer)
    models = [_tiny(norm_cfg, seed).train() for seed in (0, 1)]
    if reason is not None:
        with pytest.raises(StackingError):
            StackedModels(models)
        return
    stacked = StackedModels([copy.deepcopy(m) for m in models])
    out = stacked(x)
    for i, m in enumerate(models):  # model i on its own batch, as if it ran alone
        torch.testing.assert_close(out[i], m(x[i]))
