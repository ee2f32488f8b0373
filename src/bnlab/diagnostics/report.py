"""`bnlab health RUN_DIR`: load a run's config and checkpoint, measure BN health on data, print a report."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from bnlab.diagnostics.health import BNHealthMonitor, HealthConfig
from bnlab.train.build import build
from bnlab.train.checkpoint import load_checkpoint
from bnlab.train.evaluate import evaluate


def health_report(run_dir: Path, overrides: list[str] = (), batches: int = 8) -> str:
    config = run_dir / "config.yaml"
    if not config.exists():
        raise FileNotFoundError(f"{config} not found: pass a bnlab run directory")
    cfg = OmegaConf.merge(OmegaConf.load(config), OmegaConf.from_dotlist(list(overrides)))
    job = build(cfg, "cpu")  # the run's own builders: same data split, model and loss
    data, model, loss_fn = job.data, job.model, job.loss_fn
    model.load_state_dict(load_checkpoint(run_dir / "checkpoint.pt")["model"])
    metrics = {
        f"val_{k}_{m}": v for m in ("running", "batch") for k, v in evaluate(model, data.val, loss_fn, m).items()
    }
    monitor = BNHealthMonitor(HealthConfig.from_cfg(cfg.get("health"), batches=batches, val_batches=batches))
    stats = monitor.layer_stats(model, data.train, data.val)  # training batches (train mode), validation (eval)
    row = monitor.check(model, data.train, metrics, val_batches=data.val)
    lines = [
        f"run {run_dir}",
        "val loss/err with running stats: {val_loss_running:.4f} / {val_err_running:.4f}; "
        "with batch stats: {val_loss_batch:.4f} / {val_err_batch:.4f}".format(**metrics),
        f"{'layer':<28}{'rv_min':>11}{'rv_max':>11}{'tiny':>6}{'denorm':>7}{'dead':>7}{'mean_z':>8}{'stale_z':>8}"
        f"{'compos':>8}{'val_z':>10}",
    ]
    for name, s in stats.items():
        lines.append(
            f"{name:<28}{s['running_var_min']:>11.3g}{s['running_var_max']:>11.3g}{s['n_tiny_var']:>6}"
            f"{s['n_denormal_var']:>7}{s.get('dead_fraction', 0):>7.2f}{s.get('mean_z', 0):>8.2f}"
            f"{s.get('stale_max_z', 0):>8.2f}{s.get('composition', 0):>8.2f}{s.get('val_max_z', 0):>10.3g}"
        )
    lines.append(f"eval-train loss gap: {row['health/eval_train_loss_gap']:.4f}")
    lines.append(monitor.describe())
    return "\n".join(lines)
