"""How a run's processes start: the one place that reads `train.processes` and decides between

- here: one process trains (train.processes = 1);
- spawn: this process holds the run lock, spawns train.processes ranks on this machine and waits (pycls's
  multi_proc_run); a SIGTERM (or submitit's preemption signal) to it is passed on to every rank, and it returns
  only once every rank has exited;
- join: this process is one of the ranks an outside engine started (torchrun, srun, submitit tasks:
  distributed.launched_rank); rank 0 holds the run lock until every other rank has exited.

The runner hands `start` one function, `entry(cfg, place)`: what one process does for a run. Every process of every
shape runs it once (a spawned rank too: nothing re-enters the runner's `run`); `Place` tells it its rank, its device,
how to hold the run (lock, process group) and whether it spawns ranks instead of training. On a multi-GPU box each
job placed here claims its own devices first (device_claims.py). A rank stopped by a signal exits with
TERMINATED_EXIT; the run is left resumable and is recorded by no one (never as failed).
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import OmegaConf
from torch.multiprocessing.spawn import ProcessException

from bnlab.train.device_claims import claimed_devices, visible_to_children
from bnlab.train.distributed import (
    SINGLE,
    LaunchedRank,
    Rank,
    backend_for,
    check_device_count,
    join_group,
    launched_rank,
    teardown,
)
from bnlab.train.outcome import TERMINATED_EXIT, Outcome, SigtermGuard, Terminated, recorded
from bnlab.train.run_dir import RunDir, run_id
from bnlab.utils.io import atomic_write_text

RANKS_LEFT_WAIT_S = 120  # a joined rank 0 waits this long at most for the other ranks to exit before unlocking
# a joined rank's mark of life (ranks but 0; rank 0 holds the run lock likewise, RunDir.lock_until_exit): never closed,
# the kernel drops it when the process has exited, so no rank lives on (even shutting down) while the run looks free
_HELD_UNTIL_EXIT: list = []


def processes(cfg) -> int:
    """train.processes, read here only (null counts as 1)."""
    return int(cfg.train.get("processes") or 1)


@dataclass
class Place:
    """This process's part in its run, as `start` decided it. shape: here | spawn | spawned | joined."""

    shape: str = "here"
    rank: Rank = SINGLE
    stack: ExitStack = field(default_factory=ExitStack)  # what this process holds until it is done with the run
    entry: Callable | None = None  # spawn: what every rank runs
    init_file: str | None = None  # spawned: the file:// rendezvous
    placement: LaunchedRank | None = None  # joined: where the engine put this process
    claimed: list[int] | None = None  # CUDA devices this job claimed (one GPU per job on a multi-GPU box)

    @property
    def spawns(self) -> bool:
        return self.shape == "spawn"

    def device(self, cfg, resolved: str) -> str:
        """The torch device of this process: cuda:<local rank> for a rank; a claimed device for a job placed here."""
        if not resolved.startswith("cuda"):
            return resolved
        if self.shape in ("spawned", "joined"):
            return f"cuda:{self.rank.local}" if self.rank.world > 1 else resolved
        if resolved != "cuda":  # cuda:N: the user's choice
            return resolved
        count = processes(cfg) if self.spawns else 1
        if self.spawns:
            check_device_count(count, resolved)  # before claiming: too few devices is an error, not a wait
        self.claimed = self.stack.enter_context(claimed_devices(count))
        if self.claimed is None:
            return resolved
        torch.cuda.set_device(self.claimed[0])
        return f"cuda:{self.claimed[0]}"

    def holding(self, cfg, rd: RunDir):
        """Context yielding whether this process may train (or spawn) the run: the lock, and the group of ranks."""
        if self.shape == "spawned":
            return _spawned_group(cfg, self)
        if self.shape == "joined":
            return _joined_group(cfg, self, rd)
        return rd.locked()

    def spawn_ranks(self, cfg, rd: RunDir, raise_on_failure: bool) -> dict | None:
        """Start the run's ranks on this machine, wait for all of them; a rank that died unrecorded is recorded."""
        rd.write_config(cfg)
        env = {"CUDA_VISIBLE_DEVICES": visible_to_children(self.claimed)} if self.claimed else {}
        body = lambda: _spawn_and_wait(self.entry, cfg, processes(cfg), rd, env)
        recorded(body, _record_failure(cfg, rd), raise_on_failure)
        return rd.summary()


def start(cfg, entry: Callable[[object, Place], dict | None]) -> dict | None:
    """Run `entry(cfg, place)` in the shape this run needs (module doc); what it returns (rank 0's summary)."""
    placement = launched_rank(processes(cfg))  # torchrun / SLURM / submitit ranks; None: bnlab decides
    if placement is not None:
        place = Place("joined", Rank(placement.index, placement.world, placement.local), placement=placement)
    else:
        place = Place("spawn" if processes(cfg) > 1 else "here", entry=entry)
    with place.stack:  # unwound last: this job's device claims
        return entry(cfg, place)


def _record_failure(cfg, rd: RunDir) -> Callable[[Outcome], None]:
    def finish(out: Outcome) -> None:
        if out.status == "failed" and rd.status() is None:  # the ranks wrote no summary: record the failure
            atomic_write_text(rd.error, out.traceback or "")
            reason = f"{type(out.error).__name__}: {str(out.error).strip()[-500:]}"
            rd.write_summary({"run_id": run_id(cfg), "run_dir": str(rd.root), "status": "failed", "reason": reason})

    return finish


def _all_agree(flag: bool, cfg) -> bool:
    """True when `flag` holds on every rank (one all-reduce; on the rank's CUDA device under NCCL)."""
    device = f"cuda:{torch.cuda.current_device()}" if backend_for(str(cfg.device)) == "nccl" else "cpu"
    t = torch.tensor([0.0 if flag else 1.0], device=device)
    dist.all_reduce(t)
    return t.item() == 0


def _ranks_file(rd: RunDir, exclusive: bool, wait_s: float = 0.0) -> int | None:
    """An flock on <run>/.ranks: shared by every rank but 0 while it lives; rank 0 takes it exclusively (waiting up
    to `wait_s`) to know the others have exited. The fd, or None when not had in time."""
    fd = os.open(rd.root / ".ranks", os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.05)


@contextmanager
def _joined_group(cfg, place: Place, rd: RunDir) -> Iterator[bool]:
    """One rank of an engine-started run: join the group; rank 0 locks the run, the others mark themselves alive,
    each until its process exits; rank 0 leaves only once the others have exited."""
    join_group(cfg, place.placement)
    rd.root.mkdir(parents=True, exist_ok=True)
    owned = rd.lock_until_exit() if place.rank.main else True
    if not place.rank.main and (fd := _ranks_file(rd, exclusive=False, wait_s=5.0)) is not None:
        _HELD_UNTIL_EXIT.append(fd)  # rank 0 sees it gone once this process has exited
    agreed = False
    try:
        agreed = _all_agree(owned, cfg)
        if not agreed and place.rank.main:
            print(f"[bnlab] {rd.root}: being trained by another process, skipping")
        yield agreed
        dist.barrier()  # every rank done before teardown: gloo aborts when a peer vanishes mid-connection
    finally:
        teardown()  # a stopped rank leaves the group: a peer blocked in a collective errors out and stops too
        if place.rank.main and agreed and (fd := _ranks_file(rd, True, RANKS_LEFT_WAIT_S)) is not None:
            os.close(fd)  # every other rank has exited: the run lock may go


@contextmanager
def _spawned_group(cfg, place: Place) -> Iterator[bool]:
    """A rank bnlab spawned: its parent holds the run lock; join the others through the run's file:// rendezvous."""
    backend = backend_for(str(cfg.device))
    dist.init_process_group(
        backend, init_method=f"file://{place.init_file}", rank=place.rank.index, world_size=place.rank.world
    )
    try:
        yield True
        dist.barrier()  # every rank done before teardown: gloo aborts when a peer vanishes mid-connection
    finally:
        teardown()


def _rank_main(index: int, entry, cfg_yaml: str, world: int, init_file: str) -> None:
    """A spawned rank: runs the runner's per-process entry; a stop signal ends it with TERMINATED_EXIT."""
    cfg = OmegaConf.create(cfg_yaml)
    if backend_for(str(cfg.device)) == "nccl":
        torch.cuda.set_device(index)
    os.environ["LOCAL_RANK"] = str(index)  # this spawned process only: one machine, rank = local rank
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    try:
        entry(cfg, Place("spawned", Rank(index, world, index), init_file=init_file))
    except Terminated:
        sys.exit(TERMINATED_EXIT)  # the parent reads it: stopped, not failed


@contextmanager
def _standard_start_method():
    """A spawned child re-applies its parent's global start method before it unpickles anything. Inside a joblib
    (loky) worker, where Hydra's joblib launcher runs each job, that method is 'loky', which the fresh child cannot
    find; so while ranks start, the global method is 'spawn', and the worker's own is restored afterwards."""
    method = multiprocessing.get_start_method(allow_none=True)
    if method is None or method in multiprocessing.get_all_start_methods():
        yield
        return
    multiprocessing.set_start_method("spawn", force=True)
    try:
        yield
    finally:
        multiprocessing.set_start_method(method, force=True)


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """os.environ with `values` while children start (a spawned child takes its parent's environment)."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _spawn_and_wait(entry, cfg, count: int, rd: RunDir, env: dict[str, str]) -> None:
    """Run `entry` in `count` ranks and wait for every one. A failing rank stops the others (torch's spawn); a stop
    signal here is passed on to every rank, and Terminated is raised once all have exited (or one exited stopped)."""
    init_file = (rd.root / ".dist_init").resolve()  # absolute: in file://runs/x the "runs" would be a URL host
    init_file.unlink(missing_ok=True)  # a file store left by a killed attempt would confuse the rendezvous
    cfg_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    try:
        with _standard_start_method(), _environment(env):
            ranks = mp.start_processes(
                _rank_main,
                args=(entry, cfg_yaml, count, str(init_file)),
                nprocs=count,
                join=False,
                start_method="spawn",
            )
        with SigtermGuard(on_stop=lambda signum: _forward_stop(ranks.processes)) as guard:
            try:
                while not ranks.join(grace_period=RANKS_LEFT_WAIT_S):  # a stopping rank may be writing its epoch
                    pass
            except ProcessException as e:
                if guard.stopping() or getattr(e, "exit_code", None) == TERMINATED_EXIT:
                    raise Terminated("a rank was stopped") from e
                raise
    finally:
        init_file.unlink(missing_ok=True)


def _forward_stop(ranks) -> None:
    for process in ranks:
        if process.is_alive():
            os.kill(process.pid, signal.SIGTERM)


__all__ = ["Place", "processes", "start"]
