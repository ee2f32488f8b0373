"""One registry mechanism: every group's `name:` maps to a constructor whose signature is the YAML's keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from bnlab.config_errors import ConfigError
from bnlab.data import DATASETS, SHARED_KEYS
from bnlab.data.samplers import EVAL_SAMPLERS, SAMPLERS
from bnlab.models import MODELS
from bnlab.norm import NORMS
from bnlab.registry import Registry
from bnlab.runner import run
from bnlab.train.__main__ import CONF_DIR
from bnlab.train.losses import LOSSES
from bnlab.train.optim import OPTIMIZERS, SCHEDULES

GROUPS = {  # conf/<group>/ -> its registry (and keys the group shares beyond the constructor's)
    "model": (MODELS, ()),
    "norm": (NORMS, ()),
    "sampler": (SAMPLERS, ()),
    "data": (DATASETS, SHARED_KEYS),
    "optim": (OPTIMIZERS, ()),
    "schedule": (SCHEDULES, ()),
    "loss": (LOSSES, ()),
}


def _yamls(group: str) -> dict[str, object]:
    """conf/<group>/*.yaml with their defaults lists resolved (ghost.yaml extends batch.yaml)."""
    from conftest import compose_cfg

    return {p.stem: compose_cfg([f"{group}={p.stem}"])[group] for p in sorted(Path(CONF_DIR, group).glob("*.yaml"))}


def test_every_builder_is_one_kind_of_registry():
    for registry, _ in GROUPS.values():
        assert type(registry) is Registry
    assert type(EVAL_SAMPLERS) is Registry


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_every_yaml_matches_its_constructor_and_every_option_has_a_yaml(group):
    registry, shared = GROUPS[group]
    yamls = _yamls(group)
    for cfg in yamls.values():
        registry.check(cfg, shared=shared)  # no unknown key, no missing one
    assert set(registry) <= {cfg.name for cfg in yamls.values()}, "a registered option without a conf/ YAML"


@pytest.mark.parametrize(
    "override, key",
    [
        ("+optim.lrr=0.1", "optim.lrr"),
        ("+norm.epss=0.001", "norm.epss"),
        ("+model.widht=2", "model.widht"),
        ("+sampler.droplast=false", "sampler.droplast"),
        ("+schedule.warmup=1", "schedule.warmup"),
        ("+loss.smoothing=0.1", "loss.smoothing"),
        ("+data.train_subst=100", "data.train_subst"),
        ("+eval.sampler.labels=4", "eval.sampler.labels"),
    ],
)
def test_a_misspelt_key_fails_before_training_naming_it(tiny_cfg, tmp_path, override, key):
    with pytest.raises(ConfigError) as err:
        run(tiny_cfg(override))
    assert f"'{key}'" in str(err.value) and "not an option" in str(err.value), str(err.value)
    assert not (tmp_path / "runs").exists()


def test_a_missing_key_is_named():
    cfg = OmegaConf.create({"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0})
    with pytest.raises(ConfigError, match="'optim.norm_weight_decay': missing"):
        OPTIMIZERS.check(cfg)


def test_registry_builds_with_config_and_runtime_arguments():
    reg = Registry("thing", runtime=("size",))
    reg.register("box", lambda size, depth, color="red": (size, depth, color))
    assert reg.build(OmegaConf.create({"name": "box", "depth": 2}), size=3) == (3, 2, "red")
    with pytest.raises(ConfigError, match="'thing.name'.*allowed: box"):
        reg.check(OmegaConf.create({"name": "crate"}))
    with pytest.raises(ConfigError, match="'thing.size': not an option"):  # runtime arguments are not config keys
        reg.check(OmegaConf.create({"name": "box", "depth": 1, "size": 2}))
