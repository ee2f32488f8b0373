"""finetune.*: start from a run's checkpoint, keep BN or freeze it (optionally at the target's statistics)."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import open_dict

from bnlab.config import validate
from bnlab.config_errors import ConfigError
from bnlab.data import build_data
from bnlab.models import build_model
from bnlab.norm import BatchNorm2d, FrozenBatchNorm2d, build_norm, precise_bn
from bnlab.runner import run
from bnlab.train.checkpoint import load_checkpoint
from bnlab.train.finetune import prepare_finetune
from bnlab.train.run_dir import RunDir, run_id

SMALL = ["train.epochs=1", "data.train_subset=256", "eval.modes=[running]", "health.enabled=false"]


def labelled(cfg, arm: str):
    with open_dict(cfg):
        cfg.arm = arm  # what a study's conf/arm/<study>/<arm>.yaml sets
    return cfg


@pytest.fixture
def source_run(tiny_cfg):
    cfg = labelled(tiny_cfg(*SMALL, "study=ft"), "bn")
    assert run(cfg)["status"] == "completed"
    return RunDir.for_config(cfg).root


def _model(cfg, data):
    return build_model(cfg.model, build_norm(cfg.norm), data.in_channels, data.num_classes)


def test_frozen_finetune_trains_the_weights_with_constant_statistics(tiny_cfg, source_run):
    target = [
        "domains=shifted",
        "domains.train_on=target",
        "train.batch_size=4",
        "train.batches_per_epoch=8",
        "optim.lr=0.01",
    ]
    cfg = labelled(tiny_cfg(*SMALL, *target, "study=ft", "finetune.from=arm:bn", "finetune.norm=frozen"), "frozen")
    validate(cfg)
    trained = load_checkpoint(source_run / "checkpoint.pt")["model"]
    summary = run(cfg)
    assert summary["status"] == "completed" and summary["finetune"]["from"] == str(source_run / "checkpoint.pt")
    assert "target_err_running" in summary["final"]
    after = load_checkpoint(RunDir.for_config(cfg).checkpoint)["model"]
    for key in ("stem.1.running_mean", "stem.1.running_var", "stem.1.weight", "blocks.0.bn1.running_var"):
        torch.testing.assert_close(after[key], trained[key], rtol=0, atol=0)  # Frozen BN: constant
    assert "stem.1.num_batches_tracked" not in after
    assert (after["stem.0.weight"] - trained["stem.0.weight"]).abs().max() > 1e-4  # the convolutions learned


def test_keep_bn_finetune_moves_the_running_statistics(tiny_cfg, source_run):
    cfg = tiny_cfg(*SMALL, "domains=shifted", "domains.train_on=target", "train.batch_size=4")
    with open_dict(cfg):
        cfg.finetune["from"] = str(source_run)  # a run directory works too
    data = build_data(cfg)
    model = _model(cfg, data)
    done = prepare_finetune(model, cfg, data)
    assert done["norm"] == "keep" and isinstance(model.stem[1], BatchNorm2d)
    trained = load_checkpoint(source_run / "checkpoint.pt")["model"]
    torch.testing.assert_close(model.state_dict()["stem.1.running_mean"], trained["stem.1.running_mean"])


def test_recompute_stats_freezes_at_the_fine_tuning_data_statistics(tiny_cfg, source_run):
    cfg = tiny_cfg(*SMALL, "domains=shifted", "domains.train_on=target", "eval.precise_samples=128")
    with open_dict(cfg):
        cfg.finetune.update({"from": str(source_run), "norm": "frozen", "recompute_stats": True})
    data = build_data(cfg)
    model = _model(cfg, data)
    done = prepare_finetune(model, cfg, data)
    assert done["recompute_samples"] == 128 and isinstance(model.stem[1], FrozenBatchNorm2d)
    oracle = _model(cfg, data)  # Adaptive BN by hand: the trained model, statistics of the target training data
    oracle.load_state_dict(load_checkpoint(source_run / "checkpoint.pt")["model"])
    images = data.train.transform(data.train.images[:128])  # the first 128 fine-tuning images, eval batches of 64
    precise_bn(oracle, [images[:64], images[64:]], 128)
    torch.testing.assert_close(model.stem[1].running_var, oracle.stem[1].running_var)
    torch.testing.assert_close(model.blocks[4].bn2.running_mean, oracle.blocks[4].bn2.running_mean)
    source = copy.deepcopy(oracle)
    source.load_state_dict(load_checkpoint(source_run / "checkpoint.pt")["model"])
    assert (source.stem[1].running_mean - model.stem[1].running_mean).abs().max() > 0.05  # the target's, not source


def test_finetune_config_errors_and_unchanged_hashes(tiny_cfg, tmp_path):
    with pytest.raises(ConfigError, match="finetune.norm"):
        validate(tiny_cfg("finetune.norm=thaw"))
    cfg, old = tiny_cfg(), tiny_cfg()
    with open_dict(old):
        del old["finetune"]
    assert run_id(cfg) == run_id(old)
    missing = tiny_cfg("finetune.from=arm:nothing")
    data = build_data(missing)
    with pytest.raises(ConfigError, match="finetune.from.*no completed run of arm 'nothing'"):
        prepare_finetune(_model(missing, data), missing, data)
