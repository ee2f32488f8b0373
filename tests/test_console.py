"""What a new user sees: errors that name the key, the run directory, epoch lines that fit, help that guides."""

from __future__ import annotations

import dataclasses
import re

import pytest
from omegaconf import OmegaConf

from bnlab import REPO_ROOT
from bnlab.cli import main as cli_main
from bnlab.cli import studies
from bnlab.config_errors import ConfigError
from bnlab.diagnostics.health import HealthConfig
from bnlab.runner import run
from bnlab.train.console import format_row


@pytest.mark.parametrize(
    "overrides, key, hint",
    [
        (["data.train_subset=10", "train.batch_size=256"], "data.train_subset", "no full batch"),
        # 15 labels x 2 images; contiguous ghost groups of 5 cut every other pair in two
        (
            [
                "sampler=label_pairs",
                "sampler.labels_per_batch=15",
                "train.batch_size=30",
                "norm.nbs=5",
                "eval.batch_size=30",
                "data.val_subset=240",
            ],
            "norm.nbs",
            "multiple of 2",
        ),  # fmt: skip
        (
            [
                "sampler=label_pairs",
                "sampler.labels_per_batch=16",
                "train.batch_size=32",
                "norm.nbs=16",
                "norm.ghost_layout=strided",
                "eval.batch_size=32",
                "data.val_subset=256",
            ],
            "norm.nbs",
            "every label",
        ),  # fmt: skip
    ],
)
def test_bad_input_fails_before_training_naming_the_key(tiny_cfg, tmp_path, overrides, key, hint):
    with pytest.raises(ConfigError) as err:
        run(tiny_cfg(*overrides))
    assert f"'{key}'" in str(err.value) and hint in str(err.value), str(err.value)
    assert not (tmp_path / "runs").exists()


def test_label_pairs_kept_together_by_ghost_groups_are_accepted(tiny_cfg):
    from bnlab.config import validate

    # contiguous groups of 4 hold two whole pairs each; interleave splits pairs on purpose (C3's split arm)
    validate(tiny_cfg("sampler=label_pairs", "sampler.labels_per_batch=32", "norm.nbs=4"))
    validate(tiny_cfg("sampler=label_pairs", "sampler.labels_per_batch=32", "norm.nbs=16",
                      "norm.ghost_layout=strided", "sampler.interleave=strided"))  # fmt: skip


def test_a_run_prints_its_directory_and_short_epoch_lines(tiny_cfg, capsys):
    summary = run(tiny_cfg("train.epochs=1", "eval.modes=[running,batch,precise]", "eval.precise_samples=128"))
    out = capsys.readouterr().out
    assert f"[bnlab] training {summary['run_dir']}" in out
    epoch_lines = [line for line in out.splitlines() if line.startswith("[bnlab] epoch")]
    assert len(epoch_lines) == 1 and "running" in epoch_lines[0] and "precise" in epoch_lines[0]
    assert all(len(line) <= 100 for line in epoch_lines), epoch_lines


def test_epoch_line_groups_precise_sizes():
    row = {"epoch": 12, "lr": 0.123456, "train_loss": 0.123456, "train_err": 0.0412, "val_loss_running": 0.3}
    row |= {"val_err_running": 0.1, "val_err_batch": 0.11, "val_err_precise_512": 0.09, "val_err_precise_8192": 0.08}
    line = "[bnlab] " + format_row(row | {"epoch_time": 12.3}, epochs=300)
    assert "train 4.1 running 10.0 batch 11.0 precise 512:9.0 8192:8.0 |" in line and "val_loss" not in line
    assert len(line) <= 115, line  # four validation errors (ema_vs_precise): a little over the usual ~100


def test_health_config_defaults_are_train_yaml():
    """HealthConfig's defaults (for use without Hydra, bnlab.diagnostics.diagnose) are conf/train.yaml's health
    block, value for value, and bnlab's runs read the YAML."""
    yaml_health = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "conf" / "train.yaml").health)
    assert dataclasses.asdict(HealthConfig()) == yaml_health
    assert dataclasses.asdict(HealthConfig.from_cfg()) == yaml_health


def test_help_lists_every_command_and_how_to_train(capsys):
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    out = capsys.readouterr().out
    commands = re.search(r"\{([a-z,-]+)\}", out).group(1).split(",")
    assert {"collect", "figures", "status", "sync", "health", "report", "plan"} <= set(commands)
    assert "python -m bnlab.train" in out
    with pytest.raises(SystemExit):
        cli_main(["collect", "--help"])
    out = capsys.readouterr().out
    assert studies() and all(s in out for s in studies())
