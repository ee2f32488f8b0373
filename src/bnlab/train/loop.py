"""The training loop: `fit` runs the epochs (train, evaluate, hooks), `train_one_epoch` one pass over the data.

Knows nothing about which norm is used, nor which hooks watch it: norm-specific behaviour lives in the layers,
evaluation modes in evaluate.py, BN health in a hook (train/hooks.py). Above it, bnlab.runner validates the config,
builds, resumes or skips, and records how the run ended.
"""

from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from bnlab.train.accumulate import GradientAccumulator, optimizer_steps
from bnlab.train.build import Built
from bnlab.train.checkpoint import Progress, save
from bnlab.train.console import format_row
from bnlab.train.distributed import SINGLE, shard, wrap_model
from bnlab.train.evaluate import eval_variants, evaluate
from bnlab.train.fast import prepare_training_model
from bnlab.train.hooks import Hook
from bnlab.train.outcome import NO_GUARD, Diverged
from bnlab.train.run_dir import RunDir

__all__ = ["Diverged", "fit", "train_one_epoch"]


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


def _evaluate_epoch(cfg, job: Built, hooks: list[Hook], row: dict, epoch: int) -> None:
    """Validation in every configured mode, then the hooks (the BN health check), into the epoch's row."""
    data, replay = job.data, cfg.eval.get("ema_frozen_steps")  # replay: ema_frozen's cap (None: every step)
    for eval_mode, suffix, samples in eval_variants(cfg.eval):
        val = data.val_batch if eval_mode == "batch" and data.val_batch is not None else data.val
        for k, v in evaluate(job.model, val, job.loss_fn, eval_mode, data.train, samples, replay).items():
            row[f"val_{k}_{suffix}"] = v
        if data.target_val is not None:  # the shifted target domain (data/domains.py)
            target = evaluate(job.model, data.target_val, job.loss_fn, eval_mode, data.train, samples, replay)
            for k, v in target.items():
                row[f"target_{k}_{suffix}"] = v
    if data.train_eval is not None:  # Ioffe 2017 sec. 4.3's train accuracy: eval mode, training images
        for k, v in evaluate(job.model, data.train_eval, job.loss_fn, "running").items():
            row[f"train_{k}_running"] = v
    for hook in hooks:
        row.update(hook.on_eval(job.model, job.data, row, epoch + 1))


def _batch_hook(hooks: list[Hook], model, logger, progress: Progress):
    """train_one_epoch's step_hook: each hook's `on_batch` every `every_n_batches` batches, logged; None if unused."""
    watching = [hook for hook in hooks if hook.every_n_batches]
    if not watching:
        return None

    def step_hook(i: int) -> None:
        for hook in watching:
            if (i + 1) % hook.every_n_batches == 0:
                logger.log(hook.on_batch(model), step=progress.step + i + 1)

    return step_hook


def fit(cfg, job: Built, rd: RunDir, progress: Progress, logger, hooks=(), rank=SINGLE, guard=NO_GUARD) -> None:
    """The epochs: train, evaluate, run the hooks, then (rank 0) metrics.csv, W&B, one console line and a checkpoint
    with the hooks' states (a SIGTERM there waits for the epoch's files to be written: `guard`)."""
    hooks = list(hooks)
    net, batches = wrap_model(job.model, rank), shard(job.data.train, rank)  # identity in one process
    net = prepare_training_model(net, cfg.train, job.data.train.device)  # channels_last / autocast / compile
    step_hook = _batch_hook(hooks, job.model, logger, progress)
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
                scaler=job.scaler,  # fp16 autocast only (train/fast.py), restored by a resume
            )
        )
        progress.step += optimizer_steps(len(job.data.train), accumulate)
        _evaluate_epoch(cfg, job, hooks, row, epoch)
        job.schedule.step_epoch(row)
        row.update(step=progress.step, epoch_time=time.time() - t_epoch)
        progress.history.append(row)
        progress.epoch = epoch + 1
        if rank.main:
            with guard.deferred():
                rd.write_metrics(progress.history)
                logger.log(row, step=progress.step)
                print("[bnlab] " + format_row(row, epochs))
                save(rd, job, progress, hooks)
