"""Performance tables of `make bench` (scripts/bench.py is its command line): what each measures is in that
script's docstring and results/bench/README.md. This package: provenance and table writing, the timed training
setups (setup.py), training throughput and overheads (train.py), concurrent processes (concurrent.py) and the
studies' wall times (studies.py).
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import platform
import statistics
import subprocess
from pathlib import Path

import torch

from bnlab import REPO_ROOT

ROOT = REPO_ROOT
OUT = ROOT / "results" / "bench"


def provenance(device: str | None = None) -> dict:
    """Where and with what a table was measured; `device` defaults to CUDA when present."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name()
        if device == "cuda"
        else f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores, shared)",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit.stdout.strip(),
    }


def write_table(name: str, rows: list[dict], prov: dict, out: Path = OUT) -> None:
    rows = [{**r, **prov} for r in rows]
    path = out / f"{name}_{prov['device']}.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    keys = [k for k in rows[0] if k not in prov]
    print(f"\n## {name} ({prov['device_name']}, torch {prov['torch']}, {prov['threads']} threads, {prov['date']})")
    print(" | ".join(keys))
    for r in rows:
        print(" | ".join(f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in keys))
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def interleaved(fns: dict, rounds: int, warmed: bool = False) -> dict[str, float]:
    """Median seconds of each timed function over `rounds`, after one warm-up call each (allocator, kernels) unless
    the caller `warmed` them. Interleaved, one call of each per round, so load from other jobs hits every variant."""
    for fn in [] if warmed else fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(fn())
    return {name: statistics.median(ts) for name, ts in times.items()}
