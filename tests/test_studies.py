"""Every study composes at both scales: each point of its sweep grid validates and builds; CPU runs a step."""

from __future__ import annotations

import copy
import functools
import itertools
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from bnlab.cli import joined_study
from bnlab.config import validate
from bnlab.models import build_model
from bnlab.norm import build_norm
from bnlab.runner import run
from bnlab.train.__main__ import CONF_DIR
from bnlab.train.optim import build_optimizer

STUDIES = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
SHAPES = {"fashion_mnist": (1, 10), "cifar10": (3, 10), "cifar100": (3, 100), "imagenette": (3, 10), "glyphs": (1, 500)}


def sweep_grid(study: str, scale: str) -> list[list[str]]:
    """The study's sweep as override lists, expanded like Hydra's basic sweeper (cartesian product)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        hcfg = compose("train", overrides=[f"experiment={study}", f"scale={scale}"], return_hydra_config=True)
    params = hcfg.hydra.sweeper.params or {}
    axes = [[f"{k}={v.strip()}" for v in str(vals).split(",")] for k, vals in params.items()]
    return [list(combo) for combo in itertools.product(*axes)]


def compose_point(study: str, scale: str, point: list[str]):
    """The grid point's config (a copy: callers may change it). Composed once per session: test_run_hashes and
    the grid test below compose the same points, and Hydra's compose is most of their time."""
    return copy.deepcopy(_composed(study, scale, tuple(point)))


@functools.cache
def _composed(study: str, scale: str, point: tuple[str, ...]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=[f"experiment={study}", f"scale={scale}", *point])


def test_there_are_studies():
    assert {"nbs", "renorm_small", "renorm_noniid"} <= set(STUDIES)


@pytest.mark.parametrize("scale", ["cpu", pytest.param("gpu", marks=pytest.mark.slow)])  # gpu: ~4 min, every grid point
@pytest.mark.parametrize("study", STUDIES)
def test_every_grid_point_validates_and_builds(study, scale):
    grid = sweep_grid(study, scale)
    assert len(grid) >= 3, "a study sweeps arms and seeds"
    seen = set()
    for point in grid:
        cfg = compose_point(study, scale, point)
        assert cfg.study in (study, joined_study(study)) and cfg.preset == scale  # nbs_sync joins nbs
        validate(cfg)
        in_ch, classes = SHAPES[cfg.data.name]
        model = build_model(cfg.model, build_norm(cfg.norm), in_ch, classes)
        build_optimizer(cfg.optim, model)
        seen.add(str(point))
    assert len(seen) == len(grid)


@pytest.mark.e2e
@pytest.mark.parametrize("study", STUDIES)
def test_cpu_preset_runs_one_step(study, tmp_path):
    """The first grid point of the CPU preset trains one (tiny) epoch for real."""
    cfg = compose_point(study, "cpu", sweep_grid(study, "cpu")[0])
    with open_dict(cfg):
        cfg.out_dir = str(tmp_path)
        cfg.logger.mode = "disabled"
        cfg.train.epochs = 1
        cfg.train.batches_per_epoch = 1
        if cfg.data.name == "glyphs":  # shrink by classes: a random subset would leave labels without a pair
            cfg.data.num_classes, cfg.data.train_subset, cfg.data.val_subset = 30, None, None
        else:
            cfg.data.train_subset = 1024
            cfg.data.val_subset = 2 * int(cfg.eval.get("batch_size") or cfg.train.batch_size)
        if cfg.eval.get("precise_samples"):
            cfg.eval.precise_samples = cfg.train.batch_size
    summary = run(cfg)
    assert summary["status"] == "completed" and summary["step"] == 1


@pytest.mark.parametrize("scale", ["cpu", "gpu"])
def test_an_arm_that_joins_a_study_keeps_that_studys_settings(scale):
    """nbs_sync lands in the nbs table, so apart from processes (and NBS) its runs must match nbs's at each scale."""
    base = compose_point("nbs", scale, [])
    joined = compose_point("nbs_sync", scale, [])
    assert joined.study == base.study == "nbs"
    for key in ("train.epochs", "train.batch_size", "optim.lr", "data.train_subset", "data.val_subset", "eval"):
        a, b = (OmegaConf.select(c, key) for c in (base, joined))
        assert a == b, key
    assert joined.train.processes == 2 and base.train.processes == 1


def test_an_arm_that_joins_a_study_is_collected_as_that_study(tmp_path, capsys):
    """`bnlab collect nbs_sync` collects study nbs (where nbs_sync's runs land), not an empty runs/nbs_sync."""
    from bnlab.cli import joined_study, main

    assert joined_study("nbs_sync") == "nbs" and joined_study("nbs") == "nbs"
    assert joined_study("nbs_demo") == "nbs_demo"  # not an experiment: a runs folder of its own
    with pytest.raises(SystemExit) as stop:
        main(["collect", "nbs_sync", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    out = capsys.readouterr()
    assert stop.value.code == 2 and re.search(r"runs/nbs\b", out.err)  # looked in runs/nbs, found nothing
    assert "nbs_sync's runs join study nbs" in out.out
