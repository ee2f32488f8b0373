"""(4) sweep: aggregate images/s of N training processes x T threads at once (`python -m bnlab.bench.concurrent
--worker ...` is one of them)."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bnlab.bench.setup import Setup, plain_batches, run_plain


def worker(args) -> None:
    """One training process of a concurrent group: warm up, wait for the common start, train for `duration`."""
    torch.set_num_threads(args.threads)
    s = Setup(args.model, ["train.batches_per_epoch=4"])
    batches = plain_batches(s, 4)
    run_plain(s.model, batches[:1], 0.01)
    Path(args.ready).touch()
    while not Path(args.go).exists():
        time.sleep(0.05)
    start = float(Path(args.go).read_text())
    while time.time() < start:
        time.sleep(0.01)
    images, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < args.duration:
        run_plain(s.model, batches[:1], 0.01)
        images += len(batches[0][1])
    print(f"RESULT {images / (time.perf_counter() - t0):.2f}")


def concurrent(model: str, procs: int, threads: int, duration: float) -> float:
    """Aggregate images/s of `procs` processes training at once, each with `threads` threads."""
    with tempfile.TemporaryDirectory() as tmp:
        go = Path(tmp) / "go"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        ps = [
            subprocess.Popen(
                [sys.executable, "-m", "bnlab.bench.concurrent", "--model", model, "--threads", str(threads)]
                + ["--duration", str(duration), "--ready", f"{tmp}/ready{i}", "--go", str(go)],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(procs)
        ]
        while sum(Path(f"{tmp}/ready{i}").exists() for i in range(procs)) < procs:
            time.sleep(0.1)
        go.write_text(str(time.time() + 0.5))
        rates = [float(p.communicate()[0].split("RESULT")[-1]) for p in ps]
    return sum(rates)


def bench_sweep(model: str, duration: float, rounds: int) -> list[dict]:
    cores = os.cpu_count() or 1
    configs = [(1, cores), (cores, 1)] + [(k, max(1, cores // k)) for k in (1, 2, 4, 8)]
    configs = list(dict.fromkeys(configs))
    rates = {c: [] for c in configs}
    for _ in range(rounds):
        for c in configs:
            rates[c].append(concurrent(model, *c, duration))
    ref = statistics.median(rates[(1, cores)])
    rows = []
    for (procs, threads), rs in rates.items():
        med = statistics.median(rs)
        rows.append(
            {
                "model": model,
                "processes": procs,
                "threads_each": threads,
                "rounds": rounds,
                "aggregate_images_per_s": round(med, 1),
                f"ratio_vs_1x{cores}": round(med / ref, 3),
            }
        )
    return rows


if __name__ == "__main__":  # one worker process
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--ready")
    parser.add_argument("--go")
    worker(parser.parse_args())
