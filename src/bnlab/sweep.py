"""Sweep support for Hydra multiruns: a callback that checks every job before the first starts (bnlab.plan) and
prints what a sweep left on disk when it ends.

Resuming needs no code here: every job's run directory is named by its config hash, so re-launching the same
sweep skips completed runs, resumes interrupted ones from their checkpoints and reruns failed ones only with
train.retry_failed=true (RETRY_FAILED=1 in `make sweep`).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from bnlab.train.run_dir import RunDir


def run_statuses(study_dir: Path) -> list[tuple[RunDir, str, str | None]]:
    """(run, status, reason) for every run directory of a study, read from its own files (as collect does): a held
    run lock means running (a live process trains it now); otherwise no summary means interrupted (a checkpoint is
    kept) or incomplete."""
    if not study_dir.is_dir():
        return []
    out = []
    for path in sorted(p for p in study_dir.iterdir() if p.is_dir() and (p / "config.yaml").exists()):
        rd = RunDir(path)
        summary = rd.summary()
        if rd.is_locked():
            out.append((rd, "running", None))
        elif summary:
            out.append((rd, summary.get("status"), summary.get("reason")))
        else:
            out.append((rd, "interrupted" if rd.checkpoint.exists() else "incomplete", None))
    return out


def status_report(study_dir: Path) -> str:
    runs = run_statuses(study_dir)
    if not runs:
        return f"[bnlab] sweep summary: no runs under {study_dir}"
    counts = Counter(str(status) for _, status, _ in runs)
    lines = [f"[bnlab] sweep summary for {study_dir}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))]
    for rd, status, reason in runs:
        if status != "completed":
            lines.append(f"  {status:>11}  {rd.root}" + (f"  ({reason})" if isinstance(reason, str) else ""))
    return "\n".join(lines)


def command_line_sweeps(overrides: list[str]) -> list[str]:
    """Keys swept on the command line (`norm.nbs=4,32,256`, `seed=range(3)`): the sweep's own view, lost in its jobs."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()]


class SweepSummary(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        """Every job's config is checked here, in the launching process, before the first job starts; the command
        line's swept keys are handed to the jobs (W&B tags and names: wandb_logger.run_labels) through the
        environment, which reaches every launcher's workers (same process, joblib, submitit, SLURM's --export=ALL)."""
        from bnlab.plan import check_sweep

        check_sweep(config)
        os.environ["BNLAB_SWEPT_KEYS"] = ",".join(command_line_sweeps(config.hydra.overrides.task))

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        print(status_report(Path(config.out_dir) / str(config.study)), flush=True)
