"""The parent of a multi-process run (train.processes > 1): it holds the run lock, spawns the ranks, waits.

The ranks run the entry function they are handed (bnlab.train.loop.run), as pycls's multi_proc_run; rank 0 writes
the run directory. A rank that dies before writing the summary is recorded here, so a sweep goes on.
"""

from __future__ import annotations

from collections.abc import Callable

from bnlab.train.distributed import spawn_ranks
from bnlab.train.outcome import Outcome, recorded
from bnlab.train.run_dir import RunDir, run_id
from bnlab.utils.io import atomic_write_text


def launch_ranks(cfg, rd: RunDir, entry: Callable, raise_on_failure: bool, labels) -> dict | None:
    processes = int(cfg.train.processes)
    rd.write_config(cfg)

    def finish(out: Outcome) -> None:
        if out.status == "failed" and rd.status() is None:  # the ranks wrote no summary: record the failure
            atomic_write_text(rd.error, out.traceback or "")
            reason = f"{type(out.error).__name__}: {str(out.error).strip()[-500:]}"
            rd.write_summary({"run_id": run_id(cfg), "run_dir": str(rd.root), "status": "failed", "reason": reason})

    body = lambda: spawn_ranks(entry, cfg, processes, rd.root, raise_on_failure, labels)
    recorded(body, finish, raise_on_failure)
    return rd.summary()
