"""The BN health monitor flags corrupted running statistics and stays quiet on a healthy trained model."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bnlab.cli import main as cli_main
from bnlab.data import build_data
from bnlab.diagnostics.health import BNHealthMonitor, HealthConfig, bn_layers
from bnlab.models import build_model
from bnlab.norm import build_norm
from bnlab.train.checkpoint import load_checkpoint
from bnlab.train.evaluate import evaluate
from bnlab.train.loop import run
from bnlab.train.losses import build_loss


def _trained(tiny_cfg):
    cfg = tiny_cfg("train.epochs=2")
    summary = run(cfg)
    data = build_data(cfg)
    model = build_model(cfg.model, build_norm(cfg.norm), data.in_channels, data.num_classes)
    model.load_state_dict(load_checkpoint(Path(summary["run_dir"]) / "checkpoint.pt")["model"])
    return summary, data, model, build_loss(cfg.loss, data.num_classes)


def _check(model, data, loss_fn):
    metrics = {
        f"val_{k}_{m}": v for m in ("running", "batch") for k, v in evaluate(model, data.val, loss_fn, m).items()
    }
    monitor = BNHealthMonitor(HealthConfig())
    return monitor, monitor.check(model, data.val, metrics, epoch=2)


def test_flags_collapsed_running_var_and_names_layer_and_channels(tiny_cfg, capsys):
    summary, data, model, loss_fn = _trained(tiny_cfg)
    assert summary["events"] == [] and "no EMA-corruption event" in summary["health"]  # healthy run, in summary
    assert summary["final"]["health/ema_corruption"] == 0

    monitor, row = _check(model, data, loss_fn)
    assert row["health/ema_corruption"] == 0 and not monitor.events
    assert row["health/n_tiny_var"] == 0

    name, layer = bn_layers(model)[-3]
    with torch.no_grad():
        layer.running_var[[1, 3]] = 5.6e-45  # the forum's denormal value, for two channels
    monitor, row = _check(model, data, loss_fn)
    assert row["health/ema_corruption"] == 1
    assert row["health/n_tiny_var"] == 2 and row["health/n_denormal_var"] == 2
    assert row["health/eval_train_loss_gap"] > 0.25
    (event,) = monitor.events
    assert event["layers"][0]["layer"] == name
    assert {1, 3} <= set(event["layers"][0]["channels"])
    assert name in monitor.describe()

    cli_main(["health", summary["run_dir"], "--batches", "2"])  # on the saved (healthy) checkpoint
    out = capsys.readouterr().out
    assert "no EMA-corruption event" in out and name in out


def test_events_reach_summary_json(tiny_cfg):
    summary = run(tiny_cfg("train.epochs=1", "health.gap_threshold=-100", "health.discrepancy_threshold=0"))
    saved = json.loads((Path(summary["run_dir"]) / "summary.json").read_text())
    assert saved["events"] and saved["events"][0]["event"] == "ema_corruption"
    assert "EMA-corruption event" in saved["health"]
