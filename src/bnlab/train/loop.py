"""One training run: config -> builders -> epochs -> run directory. Knows nothing about which norm is used."""

from __future__ import annotations

import math
import random
import time
import traceback
from contextlib import nullcontext

import numpy as np
import torch
from omegaconf import ListConfig
from tqdm.auto import tqdm

from bnlab.config import validate
from bnlab.data import build_data
from bnlab.diagnostics import build_monitor
from bnlab.models import build_model
from bnlab.norm import attach_norm_inputs, build_norm
from bnlab.train.accumulate import GradientAccumulator, optimizer_steps
from bnlab.train.checkpoint import load_checkpoint, save_checkpoint
from bnlab.train.distributed import SINGLE, current_rank, device_for, shard, spawn_ranks, wrap_model
from bnlab.train.evaluate import evaluate
from bnlab.train.finetune import prepare_finetune
from bnlab.train.losses import build_loss
from bnlab.train.optim import Schedule, build_optimizer
from bnlab.train.run_dir import RunDir, run_id
from bnlab.train.wandb_logger import WandbLogger
from bnlab.utils.io import atomic_write_text
from bnlab.utils.provenance import environment


class Diverged(RuntimeError):
    pass


def format_row(row: dict) -> str:
    """Core metrics on one console line; namespaced diagnostics (health/...) go to the CSV, with one flag here."""
    text = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if "/" not in k)
    return text + ("  BN-HEALTH: EMA corruption" if row.get("health/ema_corruption") else "")


def eval_variants(eval_cfg) -> list[tuple[str, str, int]]:
    """(mode, metric suffix, population samples) per evaluation. A list in eval.precise_samples evaluates
    precise/adaptive once per size, named e.g. val_err_precise_512 (how many samples Precise BN needs)."""
    samples = eval_cfg.get("precise_samples", 8192)
    sizes = [int(n) for n in samples] if isinstance(samples, list | ListConfig) else [int(samples)]
    out = []
    for m in eval_cfg.modes:
        if m in ("precise", "adaptive") and len(sizes) > 1:
            out += [(m, f"{m}_{n}", n) for n in sizes]
        else:
            out.append((m, m, sizes[-1]))
    return out


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} requested but CUDA is not available (use device=cpu or auto)")
    return name


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


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
):
    model.train()
    loader.set_epoch(epoch)
    loss_sum = torch.zeros((), device=loader.device)
    wrong = torch.zeros((), device=loader.device, dtype=torch.long)
    n = 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not progress, dynamic_ncols=True)
    stepper = GradientAccumulator(optimizer, schedule, accumulate, len(loader))  # train.accumulate micro-batches
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


def run(cfg, raise_on_failure: bool = True, tags: list[str] | None = None) -> dict:
    """Train one configuration into its run directory and return its summary.

    `tags` label the W&B run (a sweep passes its swept overrides, e.g. "norm.nbs=4").
    """
    validate(cfg)
    rd = RunDir.for_config(cfg)
    rid = run_id(cfg)
    rank = current_rank()  # Rank(0, 1) unless this is one of the ranks spawned for train.processes > 1
    previous = rd.status()
    if previous == "completed" or (previous in ("failed", "diverged") and not cfg.train.get("retry_failed")):
        print(f"[bnlab] {rd.root}: already {previous}, skipping")
        return rd.summary()
    device = device_for(resolve_device(str(cfg.device)), rank)
    seed_everything(int(cfg.seed), bool(cfg.train.get("deterministic", True)))
    data = build_data(cfg, device)
    model = build_model(cfg.model, build_norm(cfg.norm), data.in_channels, data.num_classes).to(device)
    attach_norm_inputs(model, cfg, data)  # domain ids, Virtual BN's reference batch -> norm layers (norm/attach.py)
    finetuned = prepare_finetune(model, cfg, data)  # finetune.from: load a run's weights, keep or freeze BN
    optimizer = build_optimizer(cfg.optim, model)
    epochs = int(cfg.train.epochs)
    accumulate = int(cfg.train.get("accumulate", 1))  # micro-batches per optimizer step (train/accumulate.py)
    schedule = Schedule(cfg.schedule, optimizer, optimizer_steps(len(data.train), accumulate), epochs)
    loss_fn = build_loss(cfg.loss, data.num_classes)
    with rd.locked() if rank.world == 1 else nullcontext(True) as owned:  # spawned ranks: the parent holds it
        if not owned:
            print(f"[bnlab] {rd.root}: being trained by another process, skipping")
            return {"run_id": rid, "run_dir": str(rd.root), "status": "running elsewhere"}
        if rd.status() == "completed":  # finished by another process while this one was building
            return rd.summary()
        processes = int(cfg.train.get("processes", 1))
        if processes > 1 and rank.world == 1:  # this process only launches the ranks and waits for them
            rd.write_config(cfg)
            try:
                spawn_ranks(cfg, processes, rd.root, raise_on_failure, tags)
            except Exception as e:  # a rank died before writing its summary: record it, so a sweep goes on
                if rd.status() is None:
                    atomic_write_text(rd.error, traceback.format_exc())
                    rd.write_summary(
                        {
                            "run_id": rid,
                            "run_dir": str(rd.root),
                            "status": "failed",
                            "reason": f"{type(e).__name__}: {str(e).strip()[-500:]}",
                        }
                    )
                if raise_on_failure:
                    raise
            return rd.summary()
        if rank.main:
            rd.write_config(cfg)

        monitor = build_monitor(cfg)  # BN health: reads BN-like buffers from outside, None when disabled
        start_epoch, step, history, wall_before = 0, 0, [], 0.0
        if cfg.train.get("resume", True) and rd.checkpoint.exists():
            state = load_checkpoint(rd.checkpoint)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            start_epoch, step, history = state["epoch"], state["step"], state["history"]
            wall_before = state.get("wall_time", 0.0)
            if monitor is not None:
                monitor.events = state.get("health_events", [])
            print(f"[bnlab] resuming {rd.root} from epoch {start_epoch}")

        logger = WandbLogger(cfg, rd.root, rid, tags, enabled=rank.main)
        net, train_batches = wrap_model(model, rank), shard(data.train, rank)  # identity in one process
        summary = {
            "run_id": rid,
            "study": str(cfg.study),
            "seed": int(cfg.seed),
            "run_dir": str(rd.root),
            "n_params": sum(p.numel() for p in model.parameters()),
            "data": data.info,
            **({"finetune": finetuned} if finetuned else {}),
            **environment(device),
        }
        status, t0 = "running", time.time()
        step_hook = None
        if monitor is not None and monitor.cfg.every_n_steps:

            def step_hook(i: int) -> None:  # running_var extremes between evaluations (no forward pass)
                if (i + 1) % monitor.cfg.every_n_steps == 0:
                    logger.log(monitor.running_var_extremes(model), step=step + i + 1)

        try:
            for epoch in range(start_epoch, epochs):
                t_epoch = time.time()
                row = {"epoch": epoch + 1, "lr": schedule.lr()}
                row.update(
                    train_one_epoch(
                        net,
                        train_batches,
                        loss_fn,
                        optimizer,
                        schedule,
                        epoch,
                        bool(cfg.train.get("progress", True)),
                        step_hook=step_hook,
                        rank=rank,
                        accumulate=accumulate,
                    )
                )
                step += optimizer_steps(len(data.train), accumulate)
                for eval_mode, suffix, samples in eval_variants(cfg.eval):
                    for k, v in evaluate(model, data.val, loss_fn, eval_mode, data.train, samples).items():
                        row[f"val_{k}_{suffix}"] = v
                    if data.target_val is not None:  # the shifted target domain (data/domains.py)
                        for k, v in evaluate(model, data.target_val, loss_fn, eval_mode, data.train, samples).items():
                            row[f"target_{k}_{suffix}"] = v
                if monitor is not None:
                    row.update(
                        monitor.check(model, data.train, row, epoch=epoch + 1)
                    )  # training batches: what the EMA tracks
                schedule.step_epoch(row)
                row.update(step=step, epoch_time=time.time() - t_epoch)
                history.append(row)
                if not rank.main:
                    continue
                rd.write_metrics(history)
                logger.log(row, step=step)
                print("[bnlab] " + format_row(row))
                save_checkpoint(
                    rd.checkpoint,
                    model=model.state_dict(),
                    optimizer=optimizer.state_dict(),
                    schedule=schedule.state_dict(),
                    epoch=epoch + 1,
                    step=step,
                    history=history,
                    wall_time=wall_before + time.time() - t0,
                    health_events=monitor.events if monitor else [],
                )
            status = "completed"
        except Diverged as e:
            status, summary["reason"] = "diverged", str(e)
        except Exception as e:
            status, summary["reason"] = "failed", f"{type(e).__name__}: {e}"
            if rank.main:
                atomic_write_text(rd.error, traceback.format_exc())
            if raise_on_failure:
                raise
        finally:
            if status == "running":  # interrupted (KeyboardInterrupt, kill): keep the checkpoint, write nothing
                logger.finish(failed=True)
            elif rank.main:
                summary.update(
                    status=status,
                    epochs_completed=len(history),
                    step=step,
                    wall_time=wall_before + time.time() - t0,
                    final=history[-1] if history else {},
                )
                if monitor is not None:
                    summary.update(events=monitor.events, health=monitor.describe())
                    print(f"[bnlab] {summary['health']}")
                rd.write_summary(summary)
                logger.summary({"status": status, **summary["final"]})
                logger.finish(failed=status != "completed")
        return summary
