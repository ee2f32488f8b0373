"""One training run: config -> validate -> build -> resume or skip -> fit (train/loop.py) -> finish.

Above the loop, config and diagnostics: it checks the config, picks the hooks `fit` runs (the BN health monitor),
holds the run lock, and records how the run ended (status, summary.json, error.txt). Which processes a run has
(one, ranks bnlab spawns, or ranks torchrun / SLURM started) is train/launch.py's decision: every one of them runs
`_run_process` once, with its `Place`.
"""

from __future__ import annotations

import sys
from functools import partial

from bnlab.config import validate
from bnlab.config_errors import ConfigError
from bnlab.diagnostics.monitor_hook import health_hooks
from bnlab.train.build import Built, build, resolve_device
from bnlab.train.checkpoint import Progress, resume
from bnlab.train.fast import check_fast_settings
from bnlab.train.hooks import Hook
from bnlab.train.launch import Place, start
from bnlab.train.loop import fit
from bnlab.train.outcome import Outcome, SigtermGuard, recorded
from bnlab.train.run_dir import RunDir, run_id
from bnlab.train.wandb_logger import WandbLogger
from bnlab.utils.io import atomic_write_text
from bnlab.utils.provenance import environment
from bnlab.utils.seeding import seed_everything

__all__ = ["run"]


def _finish(rd: RunDir, summary: dict, progress: Progress, hooks: list[Hook], logger, rank, out: Outcome) -> None:
    """Record how the run ended: summary.json (+ error.txt for a failure, + what each hook adds), W&B's end."""
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
    for hook in hooks:  # the health monitor: its events and verdict
        hook.on_finish(summary)
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
    hooks = health_hooks(cfg)  # BN health: reads BN-like buffers from outside, none when disabled
    progress = resume(cfg, rd, job, hooks, rank)
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
    with SigtermGuard() as guard:  # every rank: a stop signal ends each after rank 0's epoch files are written
        recorded(
            lambda: fit(cfg, job, rd, progress, logger, hooks, rank, guard),
            lambda out: _finish(rd, summary, progress, hooks, logger, rank, out),
            raise_on_failure,
            stopping=guard.stopping,
        )
    return summary


def _already_done(cfg, rd: RunDir, say: bool = True) -> bool:
    previous = rd.status()
    if previous == "failed" and (rd.summary() or {}).get("blocked"):  # nothing trained: try again
        return False
    if previous == "completed" or (previous in ("failed", "diverged") and not cfg.train.get("retry_failed")):
        if say:  # once per run, not once per rank
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
    return start(cfg, partial(_run_process, raise_on_failure=raise_on_failure, labels=labels))


def _build_job(cfg, rd: RunDir, device: str, rank) -> Built:
    try:
        return build(cfg, device)  # before the lock: a config or data error leaves nothing on disk
    except ConfigError as e:
        source = str((cfg.get("finetune") or {}).get("from") or "")
        if e.key == "finetune.from" and source.startswith("arm:") and rank.main:  # another arm's run: recorded
            _record_blocked(cfg, rd, e)
        raise


def _run_process(cfg, place: Place, raise_on_failure: bool, labels: dict | None) -> dict | None:
    """What one process does for the run: skip it if done, check and build before holding anything (an error
    here writes nothing, on any rank), then hold the run (lock, group) and train it, or spawn its ranks."""
    rd, rank = RunDir.for_config(cfg), place.rank
    if _already_done(cfg, rd, rank.main):
        return rd.summary()
    device = place.device(cfg, resolve_device(str(cfg.device)))  # a CUDA device without CUDA: ConfigError here
    check_fast_settings(cfg.train, device)  # fp16 autocast on a CPU, before anything is built
    seed_everything(int(cfg.seed), bool(cfg.train.get("deterministic", True)))
    job = _build_job(cfg, rd, device, rank)
    with place.holding(cfg, rd) as owned:
        if not owned:
            if rank.world == 1:
                print(f"[bnlab] {rd.root}: being trained by another process, skipping")
            return {"run_id": run_id(cfg), "run_dir": str(rd.root), "status": "running elsewhere"}
        if rd.status() == "completed":  # finished by another process while this one was building
            return rd.summary()
        if place.spawns:
            return place.spawn_ranks(cfg, rd, raise_on_failure)
        return _train(cfg, rd, job, rank, device, raise_on_failure, labels)
