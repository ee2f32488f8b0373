"""`bnlab health RUN_DIR`: load a run's config and checkpoint, measure BN health on data, print a report.

(`bnlab health CHECKPOINT --model module:callable ...`, for a model bnlab did not build, is in foreign.py.)
"""

from __future__ import annotations

from pathlib import Path

from bnlab.diagnostics.diagnose import layer_table, make_report
from bnlab.diagnostics.health import BNHealthMonitor, HealthConfig
from bnlab.train.evaluate import evaluate
from bnlab.train.trained import load_run


def health_report(run_dir: Path, overrides: list[str] = (), batches: int = 8, json_path: Path | None = None) -> str:
    cfg, job = load_run(run_dir, overrides)  # the run's own builders: same data split, model and loss
    data, model, loss_fn = job.data, job.model, job.loss_fn
    metrics = {
        f"val_{k}_{m}": v for m in ("running", "batch") for k, v in evaluate(model, data.val, loss_fn, m).items()
    }
    monitor = BNHealthMonitor(HealthConfig.from_cfg(cfg.get("health"), batches=batches, val_batches=batches))
    row = monitor.check(model, data.train, metrics, val_batches=data.val)  # training (train mode), validation (eval)
    stats, channels = monitor.last_measurement
    lines = [
        f"run {run_dir}",
        "val loss/err with running stats: {val_loss_running:.4f} / {val_err_running:.4f}; "
        "with batch stats: {val_loss_batch:.4f} / {val_err_batch:.4f}".format(**metrics),
        layer_table(stats),
        f"eval-train loss gap: {row['health/eval_train_loss_gap']:.4f}",
        monitor.describe(),
    ]
    if json_path is not None:
        gap = row["health/eval_train_loss_gap"]
        losses = {"eval_mode": metrics["val_loss_running"], "train_mode": metrics["val_loss_batch"]}
        make_report(stats, channels, gap, "loss", losses, monitor.cfg).to_json(json_path)
        lines.append(f"report written to {json_path}")
    return "\n".join(lines)
