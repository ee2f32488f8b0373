"""What produced a result: git commit (and dirtiness), library versions, device, CPU model, threads and math
libraries. On CPU a run is bitwise reproducible with the same commit, thread count, torch build and the CPU
instruction set ATen dispatches to (ATEN_CPU_CAPABILITY; measured: results/README.md), so those are recorded beside
the commit. None of this enters a run's hash (bnlab.train.run_dir)."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from functools import lru_cache

from bnlab import REPO_ROOT, __version__

# untracked files here change what a run computes (a new config, module or analysis), so they make a run dirty
SOURCE_DIRS = ("src", "conf", "experiments", "scripts")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def git_info() -> dict:
    """Commit, and dirty = changes to tracked files outside results/ (what analyses write) or untracked files under
    SOURCE_DIRS (ignored files excluded)."""
    commit = _git("rev-parse", "HEAD")
    tracked = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!results")  # outputs are not inputs
    untracked = _git("ls-files", "--others", "--exclude-standard", "--", *SOURCE_DIRS)
    if tracked is None or untracked is None:
        return {"git_commit": commit, "git_dirty": None}
    return {"git_commit": commit, "git_dirty": bool(tracked or untracked)}


def _cpuinfo_field(name: str) -> str | None:
    """The first `name : value` line of /proc/cpuinfo (Linux), or None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform reports."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo, or None where it does not list them (not Linux x86)."""
    flags = _cpuinfo_field("flags")
    return frozenset(flags.split()) if flags is not None else None


@lru_cache(maxsize=1)
def math_libraries() -> str:
    """BLAS / oneDNN / CPU capability of this torch build, from torch.__config__.show(), one line."""
    import torch

    shown = torch.__config__.show()
    found = []
    for label, pattern in (
        ("BLAS", r"BLAS_INFO=(\w+)"),
        ("MKL", r"Math Kernel Library Version ([\d.]+)"),
        ("oneDNN", r"MKL-DNN v([\d.]+)"),
        ("OpenMP", r"OpenMP (\d+)"),
        ("CPU capability", r"CPU capability usage: (\w+)"),
    ):
        m = re.search(pattern, shown)
        if m:
            found.append(f"{label} {m.group(1)}")
    return "; ".join(found)


def environment(device: str) -> dict:
    import torch

    info = {
        "bnlab_version": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": device,
        "hostname": platform.node(),
        "cpu_model": cpu_model(),
        "threads": torch.get_num_threads(),
        "math_libraries": math_libraries(),
        # the instruction set a rerun must force to be bitwise on another CPU (None: torch chose the CPU's best)
        "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY"),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
    else:
        info["device_name"] = platform.processor() or platform.machine()
    info.update(ranks_and_devices(info["device_name"]))
    info.update(git_info())
    return info


def ranks_and_devices(device_name: str) -> dict:
    """world_size and every rank's device name in rank order ("; "-joined): one all-gather when ranks run (every
    rank builds its summary, so every rank takes part)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return {"world_size": 1, "device_names": device_name}
    names = [None] * dist.get_world_size()
    dist.all_gather_object(names, device_name)
    return {"world_size": len(names), "device_names": "; ".join(map(str, names))}
