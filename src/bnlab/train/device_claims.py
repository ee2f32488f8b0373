"""One GPU per job on a multi-GPU box: each job of a local sweep (joblib, submitit_local) claims its own CUDA
device(s) before it builds anything, so N jobs at once train on N devices instead of all on cuda:0.

A claim is an flock on <lock dir>/<device>.<slot>.lock, named by the device's CUDA_VISIBLE_DEVICES entry (so jobs
that see the devices in another order still agree); the kernel drops it when the job's process dies, SIGKILL
included. Each device has BNLAB_JOBS_PER_GPU slots (default 1; more lets small runs share a GPU, best with the CUDA
MPS daemon), filled one per device first. A job of N ranks (Sync BN, train.processes = N) claims N devices at once;
a job that finds too few free waits for them, so more jobs than slots queue. With one visible device nothing is
claimed (jobs share it, as they did before). bnlab.train.launch decides who claims: a process placed by bnlab
with `device` auto or cuda, never a rank torchrun or SLURM placed, nor an explicit cuda:N.
"""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

LOCK_DIR_ENV = "BNLAB_DEVICE_LOCKS"  # where the claims live (default: a per-user folder in the temp dir)
PER_DEVICE_ENV = "BNLAB_JOBS_PER_GPU"  # jobs one device takes at once (make sweep JOBS_PER_GPU=k)
POLL_S = 2.0  # a waiting job looks for free devices this often


def visible_devices() -> list[str]:
    """This process's CUDA devices, by name: CUDA_VISIBLE_DEVICES's entries (indices or UUIDs) or plain indices."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if "CUDA_VISIBLE_DEVICES" not in os.environ:
        return [str(i) for i in range(count)]
    listed = [d.strip() for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    return listed[:count]


def lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / f"bnlab-devices-{os.getuid()}")


def _lock_file(name: str, slot: int) -> int:
    return os.open(lock_dir() / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.{slot}.lock", os.O_RDWR | os.O_CREAT, 0o644)


def _try_claim(names: list[str], count: int) -> list[tuple[int, int]] | None:
    """(index, fd) of `count` distinct devices with a free slot, all locked (a device's first slots first, so jobs
    spread over devices before they share one); None, holding nothing, if fewer are free."""
    taken: dict[int, int] = {}
    for slot in range(max(1, int(os.environ.get(PER_DEVICE_ENV) or 1))):
        for index, name in enumerate(names):
            if index in taken:
                continue
            fd = _lock_file(name, slot)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            taken[index] = fd
            if len(taken) == count:
                return sorted(taken.items())
    for fd in taken.values():
        os.close(fd)
    return None


@contextmanager
def claimed_devices(count: int) -> Iterator[list[int] | None]:
    """Yield the indices (this process's numbering) of `count` CUDA devices held by no other bnlab job, waiting
    while fewer are free; None where there is nothing to share out (fewer than 2 visible devices, or fewer than
    `count`: launch's device count check names that)."""
    names = visible_devices()
    if len(names) < 2 or count > len(names):
        yield None
        return
    lock_dir().mkdir(parents=True, exist_ok=True)
    waited = False
    while (taken := _try_claim(names, count)) is None:
        if not waited:
            print(f"[bnlab] waiting for {count} of {len(names)} CUDA devices to be free (other jobs hold them)")
            waited = True
        time.sleep(POLL_S)
    try:
        yield [index for index, _ in taken]
    finally:
        for _, fd in taken:
            os.close(fd)  # closing releases the flock


def visible_to_children(indices: list[int]) -> str:
    """CUDA_VISIBLE_DEVICES for processes that should see exactly these devices (a job's spawned ranks)."""
    names = visible_devices()
    return ",".join(names[i] for i in indices)
