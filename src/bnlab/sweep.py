"""Sweep support for Hydra multiruns: a callback that prints what a sweep left on disk when it ends.

Resuming needs no code here: every job's run directory is named by its config hash, so re-launching the same
sweep skips completed runs, resumes interrupted ones from their checkpoints and reruns failed ones only with
train.retry_failed=true (RETRY_FAILED=1 in `make sweep`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from bnlab.results.collect import collect


def status_report(study_dir: Path) -> str:
    runs, _ = collect(study_dir)
    if runs.empty:
        return f"[bnlab] sweep summary: no runs under {study_dir}"
    counts = Counter(runs["status"])
    lines = [f"[bnlab] sweep summary for {study_dir}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))]
    for _, r in runs[runs["status"] != "completed"].iterrows():
        reason = r.get("reason")
        lines.append(f"  {r['status']:>11}  {r['run_dir']}" + (f"  ({reason})" if isinstance(reason, str) else ""))
    return "\n".join(lines)


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        print(status_report(Path(config.out_dir) / str(config.study)), flush=True)
