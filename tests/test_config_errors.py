"""Bad input fails before training, naming the key (or file) and what would fix it."""

from __future__ import annotations

import pytest

from bnlab.config_errors import ConfigError
from bnlab.data.errors import DatasetNotFoundError
from bnlab.runner import run
from bnlab.train.checkpoint import CheckpointError
from bnlab.train.run_dir import RunDir
from conftest import TINY, run_entry_point


@pytest.mark.parametrize(
    "override, key, hint",
    [
        ("model.name=resnet21", "model.name", "resnet20"),
        ("optim.lr=-0.1", "optim.lr", "positive"),
        ("train.batch_size=0", "train.batch_size", "positive integer"),
        ("norm.name=batchnorm", "norm.name", "group"),
        ("data.name=mnist", "data.name", "fashion_mnist"),
        ("schedule.name=onecycle", "schedule.name", "cosine"),
        ("device=tpu", "device", "cuda"),
    ],
)
def test_bad_value_names_key_and_allowed_values(tiny_cfg, tmp_path, override, key, hint):
    with pytest.raises(ConfigError) as err:
        run(tiny_cfg(override))
    assert f"'{key}'" in str(err.value) and hint in str(err.value)
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_missing_dataset_names_path_and_package(tiny_cfg, tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        run(tiny_cfg(f"data.root={tmp_path / 'nowhere'}"))
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg and "dataset-fashion-mnist" in msg and "data.root" in msg


@pytest.mark.e2e
def test_entry_point_reports_config_error_without_traceback(tmp_path):
    proc = run_entry_point([*TINY, "model.name=resnet21", f"out_dir={tmp_path}"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "config key 'model.name'" in proc.stderr and "Traceback" not in proc.stderr


def test_corrupt_checkpoint_is_reported_by_path(tiny_cfg):
    cfg = tiny_cfg("train.epochs=1")
    rd = RunDir.for_config(cfg)
    rd.root.mkdir(parents=True)
    rd.checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as err:
        run(cfg)
    assert str(rd.checkpoint) in str(err.value) and "train.resume=false" in str(err.value)


@pytest.mark.parametrize(
    "overrides, env, key, hint",
    [
        (["seed=abc"], {}, "seed", "non-negative integer"),
        (["+train.epoch=5"], {}, "train.epoch", "did you mean 'train.epochs'"),
        (["+unknown.key=1"], {}, "unknown", "unknown key"),
        (["train.channels_last=yes"], {}, "train.channels_last", "true or false"),
        (["eval.ema_frozen_steps=0"], {}, "eval.ema_frozen_steps", "positive integer"),
        (["data=synthetic", "data.n_test=100", "data.val_subset=null", "norm.nbs=8"], {}, "norm.nbs", "validation"),
        ([], {"WANDB_MODE": "bogus"}, "logger.mode", "WANDB_MODE='bogus'"),
        (["logger=wandb", "logger.mode=online"], {"WANDB_MODE": None}, "logger.mode", "W&B API key"),
    ],
)
def test_checked_before_training(tiny_cfg, tmp_path, monkeypatch, overrides, env, key, hint):
    """Issue 22: each was found only inside training (or not at all); validate() now names the key."""
    from bnlab.config import validate

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with a W&B key
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for k, v in env.items():
        monkeypatch.delenv(k, raising=False) if v is None else monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as err:
        validate(tiny_cfg(*overrides))
    assert err.value.key == key and hint in str(err.value)
