"""Time forward + backward of every normalization variant against nn.BatchNorm2d, side by side in one run.

    python scripts/bench_norm.py [--quick] [--device cpu|cuda|all] [--reps N]

Shapes: CIFAR (128x64x32x32) and ImageNet (32x256x56x56, a ResNet-50 stage-1 activation), contiguous and
channels_last, on CPU always and on CUDA when present. Measurements are interleaved (one of each variant per
round, rounds repeated) so slow drift and other load on the machine hit every variant alike; the median is
reported. Writes results/bench/norm_<device>.csv and prints the ratio to nn.BatchNorm2d per shape and format.
Targets (issue #3): Ghost BN within 1.2x of nn.BatchNorm2d, Batch Renorm within 1.5x.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import platform
import random
import socket
import statistics
import subprocess
import time
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from bnlab.norm import BatchNorm2d, BatchRenorm2d, FrozenBatchNorm2d, SeparateBatchNorm2d, virtual_bn

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {"cifar": (128, 64, 32, 32), "imagenet": (32, 256, 56, 56)}
CONSTANT_LIMITS = {"warmup_steps": 0, "r_max_full_at": 0, "d_max_full_at": 0}  # clipping active from step 0


def variants(batch: int) -> dict:
    """name -> (layer factory, how a step is run). Ghost groups: nbs = batch / 8 (CIFAR 16, ImageNet 4)."""
    nbs = max(batch // 8, 2)
    return {
        "nn.BatchNorm2d": nn.BatchNorm2d,
        "bnlab BatchNorm2d": BatchNorm2d,
        "ghost nbs=B/8 contiguous": partial(BatchNorm2d, nbs=nbs),
        "ghost nbs=B/8 strided": partial(BatchNorm2d, nbs=nbs, ghost_layout="strided"),
        "train_stats=running": partial(BatchNorm2d, train_stats="running"),
        "sync (1 process)": "sync",
        "virtual (+25% reference)": "virtual",
        "batch renorm": partial(BatchRenorm2d, **CONSTANT_LIMITS),
        "batch renorm nbs=4 contiguous": partial(BatchRenorm2d, nbs=4, **CONSTANT_LIMITS),
        "batch renorm nbs=4 strided": partial(BatchRenorm2d, nbs=4, ghost_layout="strided", **CONSTANT_LIMITS),
        "frozen": partial(FrozenBatchNorm2d, trainable_affine=True),
        "separate (2 domains)": SeparateBatchNorm2d,
        "GroupNorm(32)": lambda c: nn.GroupNorm(32, c),
        "LayerNorm (GN 1 group)": lambda c: nn.GroupNorm(1, c),
        "InstanceNorm": lambda c: nn.InstanceNorm2d(c, affine=True),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init_single_process_group(device: str) -> None:
    """A world of one: Sync BN's all-reduce path runs for real, so its overhead is measured."""
    if not dist.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)


def make_step(kind, x: torch.Tensor, device: str):
    """A closure running one forward + backward of the variant on `x` (gradient wrt input and parameters)."""
    c = x.shape[1]
    ref = None
    if kind == "sync":
        _init_single_process_group(device)
        layer = BatchNorm2d(c, process_group=dist.group.WORLD)
    elif kind == "virtual":
        layer = BatchNorm2d(c)
        ref = torch.randn(max(x.shape[0] // 4, 1), *x.shape[1:], device=device).to(memory_format=_format(x))
    else:
        layer = kind(c)
    layer = layer.to(device)
    grad = torch.randn_like(x)

    def step():
        layer.zero_grad(set_to_none=True)
        xi = x.detach().requires_grad_()
        with virtual_bn(layer, ref) if ref is not None else contextlib.nullcontext():
            y = layer(xi)
        y.backward(grad)

    return step


def _format(x: torch.Tensor):
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip()


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bench_device(device: str, reps: int, shapes: dict) -> list[dict]:
    rows = []
    for shape_name, shape in shapes.items():
        for fmt_name, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
            torch.manual_seed(0)
            x = (torch.randn(*shape, device=device) * 2 + 1).contiguous(memory_format=fmt)
            steps = {name: make_step(kind, x, device) for name, kind in variants(shape[0]).items()}
            for step in steps.values():  # warm-up: allocator, kernels, first-call overheads
                step()
            times = {name: [] for name in steps}
            order = list(steps)
            for r in range(reps):
                # a new order every round, so no variant always runs right after the same one: in a fixed order
                # nn.BatchNorm2d (first, after InstanceNorm) measured 1.25x the same kernel called through bnlab
                # BatchNorm2d on the ImageNet channels_last shape
                random.Random(r).shuffle(order)
                for name in order:
                    step = steps[name]
                    _sync(device)
                    t0 = time.perf_counter()
                    step()
                    _sync(device)
                    times[name].append(time.perf_counter() - t0)
            base = statistics.median(times["nn.BatchNorm2d"])
            for name, ts in times.items():
                med = statistics.median(ts)
                rows.append(
                    {
                        "device": device,
                        "device_name": _device_name(device),
                        "threads": torch.get_num_threads() if device == "cpu" else "",
                        "torch": torch.__version__,
                        "python": platform.python_version(),
                        "commit": _commit(),
                        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                        "shape_name": shape_name,
                        "shape": "x".join(map(str, shape)),
                        "memory_format": fmt_name,
                        "variant": name,
                        "reps": reps,
                        "median_ms": round(med * 1e3, 3),
                        "min_ms": round(min(ts) * 1e3, 3),
                        "ratio_vs_nn_bn": round(med / base, 3),
                    }
                )
            print(f"[bench] {device} {shape_name} {fmt_name}: nn.BatchNorm2d {base * 1e3:.1f} ms", flush=True)
            del steps, x
    return rows


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def print_table(rows: list[dict]) -> None:
    cols = sorted({(r["shape_name"], r["memory_format"]) for r in rows}, key=lambda c: (c[0], c[1] != "contiguous"))
    names = list(dict.fromkeys(r["variant"] for r in rows))
    ratio = {(r["variant"], r["shape_name"], r["memory_format"]): r["ratio_vs_nn_bn"] for r in rows}
    base = {(r["shape_name"], r["memory_format"]): r["median_ms"] for r in rows if r["variant"] == "nn.BatchNorm2d"}
    width = max(len(n) for n in names) + 2
    header = "".join(f"{s[:5]}/{f[:8]:>8}".rjust(20) for s, f in cols)
    print(f"\n{rows[0]['device']} - {rows[0]['device_name']}: forward+backward time / nn.BatchNorm2d (median)")
    print("variant".ljust(width) + header)
    print("nn.BatchNorm2d ms".ljust(width) + "".join(f"{base[c]:20.1f}" for c in cols))
    for n in names:
        print(n.ljust(width) + "".join(f"{ratio[(n, *c)]:19.2f}x" for c in cols))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (CPU run well under the default)")
    parser.add_argument("--reps", type=int, default=None, help="rounds of measurements (default 9, quick 5)")
    parser.add_argument("--device", default="all", choices=["all", "cpu", "cuda"])
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated subset of {list(SHAPES)}")
    parser.add_argument("--out", default=str(ROOT / "results" / "bench"), help="folder for norm_<device>.csv")
    args = parser.parse_args()
    reps = args.reps or (5 if args.quick else 9)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.device != "all":
        devices = [args.device]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for device in devices:
        rows = bench_device(device, reps, {k: SHAPES[k] for k in args.shapes.split(",")})
        path = out / f"norm_{device}.csv"
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print_table(rows)
        print(f"wrote {path}")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
