"""The BN health monitor names the cause of an eval/train gap (collapsed variance, stale EMA, batch composition)
and the layer and channels, and stays quiet on a healthy trained model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from bnlab.cli import main as cli_main
from bnlab.config_errors import ConfigError
from bnlab.data import build_data
from bnlab.diagnostics.health import BNHealthMonitor, HealthConfig, bn_layers
from bnlab.models import build_model
from bnlab.norm import build_norm
from bnlab.runner import run
from bnlab.train.checkpoint import load_checkpoint
from bnlab.train.evaluate import evaluate, mode, preserved_buffers
from bnlab.train.losses import build_loss

FIXED_POINT = 4 * 2.0**-149  # 5.605e-45: float32 0.9 * 4 x 2^-149 = 3.6 x 2^-149 rounds back to 4 x 2^-149


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
    monitor = BNHealthMonitor(HealthConfig.from_cfg())
    return monitor, monitor.check(model, data.train, metrics, epoch=2, val_batches=data.val)


def test_healthy_run_is_quiet_and_denormal_running_var_is_flagged_with_layer_and_channels(tiny_cfg, capsys):
    summary, data, model, loss_fn = _trained(tiny_cfg)
    assert summary["events"] == [] and summary["health"] == "BN health: no event"  # healthy run, in summary
    assert not any(summary["final"][f"health/{k}"] for k in ("collapsed_variance", "stale_ema", "batch_composition"))

    monitor, row = _check(model, data, loss_fn)
    assert not monitor.events and row["health/n_tiny_var"] == 0 and row["health/n_collapsed"] == 0

    name, layer = bn_layers(model)[-3]
    with torch.no_grad():
        layer.running_var[[1, 3]] = 5.6e-45  # the forum's denormal value, for two channels alive on all data
    monitor, row = _check(model, data, loss_fn)
    assert row["health/collapsed_variance"] == 1 and row["health/n_collapsed"] == 2
    assert row["health/n_tiny_var"] == 2 and row["health/n_denormal_var"] == 2
    (event,) = [e for e in monitor.events if e["event"] == "collapsed_variance"]
    assert event["layers"] == [{**event["layers"][0], "layer": name, "channels": [1, 3]}]
    assert name in monitor.describe() and "collapsed variance" in monitor.describe()

    out_json = Path(summary["run_dir"]) / "health.json"
    cli_main(["health", summary["run_dir"], "--batches", "2", "--json", str(out_json)])  # the saved (healthy) one
    out = capsys.readouterr().out
    assert "BN health: no event" in out and name in out
    saved = json.loads(out_json.read_text())
    assert saved["events"] == [] and saved["gap_kind"] == "loss" and name in saved["layers"]


# --- hand-built cases: one BN layer, a read-out, batches of 16 images of 2 channels x 4 x 4 -------------------
def _probe_model() -> nn.Module:
    model = nn.Sequential(nn.BatchNorm2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
    with torch.no_grad():
        model[3].weight.copy_(torch.tensor([[4.0, 4.0], [-4.0, -4.0]]))  # class 0 when channels 0 + 1 are positive
        model[3].bias.zero_()
    return model


def _labelled(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x, (x.mean((1, 2, 3)) < 0).long()


def _gap_metrics(model, batches) -> dict:
    def loss(train: bool) -> float:
        with torch.no_grad(), mode(model, train=train), preserved_buffers(model):
            return sum(nn.functional.cross_entropy(model(x), y).item() for x, y in batches) / len(batches)

    return {"val_loss_running": loss(False), "val_loss_batch": loss(True)}


def _ema(model, batches, steps: int) -> None:
    """Train-mode forward passes only: moves the running statistics exactly as training would."""
    model.train()
    with torch.no_grad():
        for i in range(steps):
            model(batches[i % len(batches)][0])


def _monitor_events(model, train, val) -> tuple[BNHealthMonitor, dict]:
    monitor = BNHealthMonitor(HealthConfig.from_cfg())
    row = monitor.check(model, train, _gap_metrics(model, val), epoch=1, val_batches=val)
    return monitor, row


def test_channel_constant_in_training_reaches_the_float32_fixed_point_and_is_flagged_as_collapsed_variance():
    g = torch.Generator().manual_seed(0)
    model = _probe_model()
    train = []
    for _ in range(8):
        x = torch.randn(16, 2, 4, 4, generator=g)
        x[:, 1] = 0.0  # channel 1 is exactly constant on training data (a ReLU-dead channel) ...
        train.append(_labelled(x))
    val = [_labelled(torch.randn(16, 2, 4, 4, generator=g)) for _ in range(4)]  # ... and alive on validation
    _ema(model, train, 1200)  # 0.9^n from 1 reaches the denormal range after ~960 steps, then stays there
    assert model[0].running_var[1].item() == FIXED_POINT

    monitor, row = _monitor_events(model, train, val)
    assert row["health/eval_train_loss_gap"] > 1.0  # eval mode multiplies channel 1 by ~1/sqrt(eps) = 316
    assert row["health/collapsed_variance"] == 1 and row["health/stale_ema"] == 0
    (event,) = monitor.events
    assert event["event"] == "collapsed_variance"
    assert event["layers"][0]["layer"] == "0" and event["layers"][0]["channels"] == [1]
    assert event["layers"][0]["val_z"][0] > 100
    assert "collapsed variance" in monitor.describe() and "0 (channels [1])" in monitor.describe()


def test_running_statistics_behind_the_current_batches_are_flagged_as_stale_ema():
    g = torch.Generator().manual_seed(1)
    model = _probe_model()
    earlier = [_labelled(3 + 2 * torch.randn(16, 2, 4, 4, generator=g)) for _ in range(8)]
    now = [_labelled(torch.randn(16, 2, 4, 4, generator=g)) for _ in range(8)]
    _ema(model, earlier, 100)  # the layer's input distribution then moves; the EMA has had 3 steps to follow
    _ema(model, now, 3)
    monitor, row = _monitor_events(model, now, now[4:])
    assert row["health/eval_train_loss_gap"] > 0.25
    assert [e["event"] for e in monitor.events] == ["stale_ema"]
    assert monitor.events[0]["layers"][0]["layer"] == "0"
    assert "stale EMA" in monitor.describe()


def test_gap_from_non_iid_batches_is_batch_composition_not_ema_corruption():
    g = torch.Generator().manual_seed(2)
    model = _probe_model()

    def composed(i):  # every batch drawn from one of two domains, offset +-3: the batch statistics carry it
        x = torch.randn(16, 2, 4, 4, generator=g)
        y = (x.mean((1, 2, 3)) < 0).long()  # the label is the image's deviation from its own domain
        return x + (3.0 if i % 2 else -3.0), y

    train, val = [composed(i) for i in range(8)], [composed(i) for i in range(4)]
    _ema(model, train, 400)  # a converged EMA: running mean = the average batch mean (~0)
    monitor, row = _monitor_events(model, train, val)
    assert row["health/eval_train_loss_gap"] > 0.25  # eval mode keeps the +-3 offset that batch stats remove
    assert row["health/stale_ema"] == 0 and row["health/collapsed_variance"] == 0
    assert [e["event"] for e in monitor.events] == ["batch_composition"]
    assert "batch composition" in monitor.describe() and "EMA" not in monitor.describe().split(";")[0]


def test_iid_batches_with_a_fresh_ema_give_no_event():
    g = torch.Generator().manual_seed(3)
    model = _probe_model()
    train = [_labelled(torch.randn(16, 2, 4, 4, generator=g)) for _ in range(8)]
    _ema(model, train, 400)
    monitor, row = _monitor_events(model, train, train[:4])
    assert not monitor.events and row["health/max_composition"] < 3


def test_thresholds_have_one_home_in_conf_train_yaml():
    cfg = HealthConfig.from_cfg()
    assert cfg.tiny_var == 1e-30 and cfg.gap_threshold == 0.25 and cfg.collapse_z_threshold == 10.0
    assert HealthConfig.from_cfg({"gap_threshold": 0.5}).gap_threshold == 0.5
    with pytest.raises(ConfigError, match="health.gap_treshold"):
        HealthConfig.from_cfg({"gap_treshold": 0.5})


def test_events_reach_summary_json(tiny_cfg):
    summary = run(tiny_cfg("train.epochs=1", "health.gap_threshold=-100", "health.discrepancy_threshold=-1"))
    saved = json.loads((Path(summary["run_dir"]) / "summary.json").read_text())
    assert saved["events"] and saved["events"][0]["event"] == "stale_ema"
    assert "stale EMA event" in saved["health"]
