"""One training run: config -> build -> resume -> fit (the epochs) -> finish (status, summary, error.txt).

Knows nothing about which norm is used: norm-specific behaviour lives in the layers, evaluation modes in
evaluate.py, BN health in diagnostics/. A multi-process run's parent only launches its ranks (launch.py).
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext

import torch
from tqdm.auto import tqdm

from bnlab.config import validate
from bnlab.config_errors import ConfigError
from bnlab.diagnostics import build_monitor
from bnlab.train.accumulate import GradientAccumulator, optimizer_steps
from bnlab.train.build import Built, build, resolve_device
from bnlab.train.checkpoint import Progress, resume, save
from bnlab.train.console import format_row
from bnlab.train.distributed import SINGLE, current_rank, device_for, engine_rank, shard, wrap_model
from bnlab.train.evaluate import eval_variants, evaluate
from bnlab.train.fast import check_fast_settings, grad_scaler, prepare_training_model
from bnlab.train.launch import join_launched_ranks, launch_ranks
from bnlab.train.outcome import NO_GUARD, Diverged, Outcome, SigtermGuard, recorded
from bnlab.train.run_dir import RunDir, run_id
from bnlab.train.wandb_logger import WandbLogger
from bnlab.utils.io import atomic_write_text
from bnlab.utils.provenance import environment
from bnlab.utils.seeding import seed_everything

__all__ = ["Diverged", "fit", "run", "train_one_epoch"]


def train_one_epoch(
    model,
    loader,
    loss_fn,
    optimizer,
    schedule,
    epoch,
    progress,
    check_every=20,
    step_hook=None,
    rank=SINGLE,
    accumulate=1,
    scaler=None,
):
    model.train()
    loader.set_epoch(epoch)
    loss_sum = torch.zeros((), device=loader.device)
    wrong = torch.zeros((), device=loader.device, dtype=torch.long)
    n = 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not progress, dynamic_ncols=True)
    stepper = GradientAccumulator(optimizer, schedule, accumulate, len(loader), scaler)  # accumulate micro-batches
    for i, (x, y, *domain) in enumerate(bar):
        logits = model(x, *domain)  # per-sample domain ids when the data has domains (data/domains.py)
        loss = loss_fn(logits, y)
        stepper.backward(loss)  # optimizer and schedule step every `accumulate` micro-batches
        loss_sum += loss.detach().float() * len(y)
        wrong += (logits.detach().argmax(1) != y).sum()
        n += len(y)
        if (i + 1) % check_every == 0 or i + 1 == len(loader):  # one host sync every few steps, not every step
            running = loss_sum.item() / n
            if not all(math.isfinite(v.item()) for v in rank.sum(loss_sum)):  # every rank stops together
                raise Diverged(f"training loss became {running} at epoch {epoch + 1}, batch {i + 1}")
            bar.set_postfix(loss=f"{running:.4f}", lr=f"{schedule.lr():.2e}")
        if step_hook is not None:
            step_hook(i)
    loss_sum, wrong, total = rank.sum(loss_sum, wrong, torch.tensor(float(n), device=loss_sum.device))
    return {"train_loss": loss_sum.item() / total.item(), "train_err": wrong.item() / total.item()}


def _evaluate_epoch(cfg, job: Built, monitor, row: dict, epoch: int) -> None:
    """Validation in every configured mode, then the BN health check, into the epoch's row."""
    data = job.data
    for eval_mode, suffix, samples in eval_variants(cfg.eval):
        val = data.val_batch if eval_mode == "batch" and data.val_batch is not None else data.val
        for k, v in evaluate(job.model, val, job.loss_fn, eval_mode, data.train, samples).items():
            row[f"val_{k}_{suffix}"] = v
        if data.target_val is not None:  # the shifted target domain (data/domains.py)
            for k, v in evaluate(job.model, data.target_val, job.loss_fn, eval_mode, data.train, samples).items():
                row[f"target_{k}_{suffix}"] = v
    if data.train_eval is not None:  # Ioffe 2017 sec. 4.3's train accuracy: eval mode, training images
        for k, v in evaluate(job.model, data.train_eval, job.loss_fn, "running").items():
            row[f"train_{k}_running"] = v
    if monitor is not None:  # on training batches: their statistics are what the EMA tracks
        row.update(monitor.check(job.model, job.data.train, row, epoch=epoch + 1, val_batches=job.data.val))


def _health_step_hook(monitor, model, logger, progress: Progress):
    if monitor is None or not monitor.cfg.every_n_steps:
        return None

    def hook(i: int) -> None:  # running_var extremes between evaluations (no forward pass)
        if (i + 1) % monitor.cfg.every_n_steps == 0:
            logger.log(monitor.running_var_extremes(model), step=progress.step + i + 1)

    return hook


def fit(cfg, job: Built, rd: RunDir, progress: Progress, monitor, logger, rank=SINGLE, guard=NO_GUARD) -> None:
    """The epochs: train, evaluate, then (rank 0) metrics.csv, W&B, one console line and a checkpoint (a SIGTERM
    there waits for the epoch's files to be written: `guard`)."""
    net, batches = wrap_model(job.model, rank), shard(job.data.train, rank)  # identity in one process
    net = prepare_training_model(net, cfg.train, job.data.train.device)  # channels_last / autocast / compile
    step_hook = _health_step_hook(monitor, job.model, logger, progress)
    scaler = grad_scaler(cfg.train, job.data.train.device)  # fp16 autocast only; its scale restarts on a resume
    epochs, show_bar = int(cfg.train.epochs), bool(cfg.train.get("progress", True))
    accumulate = int(cfg.train.get("accumulate", 1))  # micro-batches per optimizer step (train/accumulate.py)
    progress.started = time.time()
    for epoch in range(progress.epoch, epochs):
        t_epoch = time.time()
        row = {"epoch": epoch + 1, "lr": job.schedule.lr()}
        row.update(
            train_one_epoch(
                net,
                batches,
                job.loss_fn,
                job.optimizer,
                job.schedule,
                epoch,
                show_bar,
                step_hook=step_hook,
                rank=rank,
                accumulate=accumulate,
                scaler=scaler,
            )
        )
        progress.step += optimizer_steps(len(job.data.train), accumulate)
        _evaluate_epoch(cfg, job, monitor, row, epoch)
        job.schedule.step_epoch(row)
        row.update(step=progress.step, epoch_time=time.time() - t_epoch)
        progress.history.append(row)
        progress.epoch = epoch + 1
        if rank.main:
            with guard.deferred():
                rd.write_metrics(progress.history)
                logger.log(row, step=progress.step)
                print("[bnlab] " + format_row(row, epochs))
                save(rd, job, progress, monitor)


def _finish(rd: RunDir, summary: dict, progress: Progress, monitor, logger, rank, out: Outcome) -> None:
    """Record how the run ended: summary.json (+ error.txt for a failure), the health verdict, W&B's end."""
    if out.status == "running":  # interrupted (KeyboardInterrupt, SIGTERM): keep the checkpoint, write nothing
        logger.finish(failed=True)  # flushes W&B: the attempt's epochs are in its offline folder / uploaded
        if rank.main:
            print(f"[bnlab] {rd.root}: stopped after epoch {progress.epoch}; its checkpoint is kept, rerun to resume")
        return
    if out.reason is not None:
        summary["reason"] = out.reason
    if not rank.main:
        return
    final = progress.history[-1] if progress.history else {}
    summary.update(
        status=out.status, epochs_completed=len(progress.history), step=progress.step, wall_time=progress.wall_time()
    )
    summary["final"] = final
    if monitor is not None:
        summary.update(events=monitor.events, health=monitor.describe())
        print(f"[bnlab] {summary['health']}")
    try:  # the disk may be full (the failure itself may be that): never hide the run's own error behind this one
        if out.traceback:
            atomic_write_text(rd.error, out.traceback)
        rd.write_summary(summary)
    except OSError as e:
        print(f"[bnlab] could not record this run's {out.status} outcome in {rd.root}: {e}", file=sys.stderr)
    logger.summary({"status": out.status, **final})
    logger.finish(failed=out.status != "completed")


def _train(cfg, rd: RunDir, job: Built, rank, device: str, raise_on_failure: bool, labels) -> dict:
    """Resume, fit and finish a run whose directory this process owns."""
    if rank.main:
        rd.write_config(cfg)
    monitor = build_monitor(cfg)  # BN health: reads BN-like buffers from outside, None when disabled
    progress = resume(cfg, rd, job, monitor, rank)
    rid = run_id(cfg)
    # W&B continues this directory's run and first replays the epochs it already has (a killed attempt's)
    logger = WandbLogger(cfg, rd.root, labels, enabled=rank.main, history=progress.history)
    summary = {
        "run_id": rid,
        "study": str(cfg.study),
        "seed": int(cfg.seed),
        "run_dir": str(rd.root),
        "n_params": sum(p.numel() for p in job.model.parameters()),
        "data": job.data.info,
        **({"finetune": job.finetuned} if job.finetuned else {}),
        **environment(device),
    }
    with SigtermGuard() if rank.world == 1 else nullcontext(NO_GUARD) as guard:  # ranks: stopped by the parent
        recorded(
            lambda: fit(cfg, job, rd, progress, monitor, logger, rank, guard),
            lambda out: _finish(rd, summary, progress, monitor, logger, rank, out),
            raise_on_failure,
        )
    return summary


def _already_done(cfg, rd: RunDir) -> bool:
    previous = rd.status()
    if previous == "failed" and (rd.summary() or {}).get("blocked"):  # nothing trained: try again
        return False
    if previous == "completed" or (previous in ("failed", "diverged") and not cfg.train.get("retry_failed")):
        print(f"[bnlab] {rd.root}: already {previous}, skipping")
        return True
    return False


def _record_blocked(cfg, rd: RunDir, e: ConfigError) -> None:
    """A run that could not start because a run it fine-tunes is missing or failed: recorded as failed (and
    `blocked`, so the next sweep tries it again, as nothing was trained), so `bnlab status` lists it."""
    with rd.locked() as owned:
        if owned and rd.status() != "completed":
            rd.write_config(cfg)
            rid = run_id(cfg)
            rd.write_summary(
                {
                    "run_id": rid,
                    "study": str(cfg.study),
                    "seed": int(cfg.seed),
                    "run_dir": str(rd.root),
                    "status": "failed",
                    "reason": str(e),
                    "blocked": True,
                    "epochs_completed": 0,
                }
            )


def run(cfg, raise_on_failure: bool = True, labels: dict | None = None) -> dict:
    """Train one configuration into its run directory and return its summary.

    `labels` name the W&B run: {name, job_type, tags} (wandb_logger.run_labels; default: from the config).
    A SIGTERM stops it with Terminated (train.outcome) after flushing W&B, its last checkpoint kept.
    """
    validate(cfg)
    if (placement := engine_rank(cfg)) is not None:  # one of the ranks torchrun / SLURM tasks started
        return join_launched_ranks(cfg, placement, run, raise_on_failure, labels)
    rd, rank = RunDir.for_config(cfg), current_rank()  # Rank(0, 1) unless a rank spawned for train.processes > 1
    if _already_done(cfg, rd):
        return rd.summary()
    device = device_for(resolve_device(str(cfg.device)), rank)  # a CUDA device without CUDA: ConfigError here
    check_fast_settings(cfg.train, device)  # fp16 autocast on a CPU, before anything is built
    seed_everything(int(cfg.seed), bool(cfg.train.get("deterministic", True)))
    try:
        job = build(cfg, device)  # before the lock: a config or data error leaves nothing on disk
    except ConfigError as e:
        source = str((cfg.get("finetune") or {}).get("from") or "")
        if e.key == "finetune.from" and source.startswith("arm:") and rank.main:  # another arm's run: recorded
            _record_blocked(cfg, rd, e)
        raise
    with rd.locked() if rank.world == 1 else nullcontext(True) as owned:  # spawned ranks: the parent holds it
        if not owned:
            print(f"[bnlab] {rd.root}: being trained by another process, skipping")
            return {"run_id": run_id(cfg), "run_dir": str(rd.root), "status": "running elsewhere"}
        if rd.status() == "completed":  # finished by another process while this one was building
            return rd.summary()
        if int(cfg.train.get("processes", 1)) > 1 and rank.world == 1:  # this process launches the ranks
            return launch_ranks(cfg, rd, run, raise_on_failure, labels)
        return _train(cfg, rd, job, rank, device, raise_on_failure, labels)
