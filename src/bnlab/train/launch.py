"""The ranks of a multi-process run (train.processes > 1), started by bnlab or by the user's engine.

- `launch_ranks`: the run's parent holds the run lock, spawns the ranks on this machine and waits. The ranks run
  the entry function they are handed (bnlab.runner.run), as pycls's multi_proc_run.
- `join_launched_ranks`: this process is one of the ranks torchrun or SLURM tasks started (distributed.launched_rank);
  it joins the group through env://, rank 0 holds the run lock, every rank runs the entry function.
Either way rank 0 writes the run directory; a run whose ranks died before writing the summary is recorded here, so
a sweep goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.distributed as dist

from bnlab.train.distributed import LaunchedRank, backend_for, join_group, spawn_ranks, teardown
from bnlab.train.outcome import Outcome, recorded
from bnlab.train.run_dir import RunDir, run_id
from bnlab.utils.io import atomic_write_text


def _record_failure(cfg, rd: RunDir) -> Callable[[Outcome], None]:
    def finish(out: Outcome) -> None:
        if out.status == "failed" and rd.status() is None:  # the ranks wrote no summary: record the failure
            atomic_write_text(rd.error, out.traceback or "")
            reason = f"{type(out.error).__name__}: {str(out.error).strip()[-500:]}"
            rd.write_summary({"run_id": run_id(cfg), "run_dir": str(rd.root), "status": "failed", "reason": reason})

    return finish


def launch_ranks(cfg, rd: RunDir, entry: Callable, raise_on_failure: bool, labels) -> dict | None:
    processes = int(cfg.train.processes)
    rd.write_config(cfg)
    body = lambda: spawn_ranks(entry, cfg, processes, rd.root, raise_on_failure, labels)
    recorded(body, _record_failure(cfg, rd), raise_on_failure)
    return rd.summary()


def _all_agree(flag: bool, cfg) -> bool:
    """True when `flag` holds on every rank (one all-reduce; on the rank's CUDA device under NCCL)."""
    device = f"cuda:{torch.cuda.current_device()}" if backend_for(str(cfg.device)) == "nccl" else "cpu"
    t = torch.tensor([0.0 if flag else 1.0], device=device)
    dist.all_reduce(t)
    return t.item() == 0


def join_launched_ranks(cfg, placement: LaunchedRank, entry: Callable, raise_on_failure: bool, labels) -> dict | None:
    """One rank of a run started by torchrun / SLURM tasks: join, train with the others, leave together."""
    join_group(cfg, placement)
    rd = RunDir.for_config(cfg)
    try:
        with rd.locked() if placement.index == 0 else nullcontext(True) as owned:  # rank 0 holds the run lock
            if not _all_agree(owned, cfg):
                if placement.index == 0:
                    print(f"[bnlab] {rd.root}: being trained by another process, skipping")
                return {"run_id": run_id(cfg), "run_dir": str(rd.root), "status": "running elsewhere"}
            if placement.index == 0:
                rd.write_config(cfg)
                recorded(lambda: entry(cfg, raise_on_failure, labels), _record_failure(cfg, rd), raise_on_failure)
            else:
                entry(cfg, raise_on_failure, labels)
            dist.barrier()  # every rank done before teardown: gloo aborts when a peer vanishes mid-connection
        return rd.summary()
    finally:
        teardown()
