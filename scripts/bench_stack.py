"""Aggregate training images/s of k runs stacked into one process (bnlab.train.stacked) vs the same k runs stepped
one after another.

    python scripts/bench_stack.py [--quick] [--device auto|cpu|cuda] [--model resnet20] [--ks 1,2,4,8] [--out DIR]

The model is the CPU preset's (conf/scale/cpu.yaml: resnet20 at width 0.5 with bnlab's BatchNorm2d, batch 128 of
1x28x28 images, 10 classes); the images are random, since throughput does not depend on pixel values (no dataset
needed). Both sides train the same k models (seeds 0..k-1) on the same batches (one per model and step), fp32,
SGD with momentum 0.9, Nesterov and weight decay, in this process with its thread count: "separate" is k modules
with their own torch.optim.SGD stepped in turn; "stacked" is one StackedModels + StackedSGD step. Rounds
interleave the two so load from other jobs hits both alike; the median is reported. On CUDA every timing
synchronizes the device. Writes stack_<device>.csv (device, threads, versions, date, commit) into --out.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from bench import OUT, provenance, write_table  # scripts/bench.py: the tables share one format
from bnlab import CONF_DIR
from bnlab.models import build_model
from bnlab.norm import build_norm
from bnlab.train.stacked import StackedModels, StackedSGD, stacked_step

SGD = {"momentum": 0.9, "weight_decay": 5e-4, "nesterov": True}
LR = 0.1


def make_model(model: str, width: float, seed: int, device: str) -> nn.Module:
    torch.manual_seed(seed)
    cfg = OmegaConf.load(Path(CONF_DIR) / "model" / f"{model}.yaml")
    if "width" in cfg:
        cfg.width = width
    norm = build_norm(OmegaConf.load(Path(CONF_DIR) / "norm" / "batch.yaml"))
    return build_model(cfg, norm, in_channels=1, num_classes=10).to(device)


def timed(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def bench_k(args, k: int, device: str) -> dict:
    """One row: k separate runs stepped in turn vs k stacked runs, the same batches, `args.rounds` rounds."""
    g = torch.Generator().manual_seed(k)
    xs = torch.randn(args.steps, k, args.batch, 1, 28, 28, generator=g).to(device)
    ys = torch.randint(0, 10, (args.steps, k, args.batch), generator=g).to(device)
    models = [make_model(args.model, args.width, seed, device) for seed in range(k)]
    opts = [torch.optim.SGD(m.parameters(), lr=LR, **SGD) for m in models]
    stacked = StackedModels([make_model(args.model, args.width, seed, device) for seed in range(k)])
    stacked_opt = StackedSGD(stacked.params, [LR] * k, **SGD)

    def separate(steps: int) -> None:
        for s in range(steps):
            for i, (m, opt) in enumerate(zip(models, opts)):
                opt.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(m(xs[s, i]), ys[s, i]).backward()
                opt.step()

    def stack(steps: int) -> None:
        for s in range(steps):
            stacked_step(stacked, stacked_opt, xs[s], ys[s])

    timed(lambda: separate(1), device)  # warm-up: allocator, kernels, the stacked forward's first-call check
    timed(lambda: stack(1), device)
    times = {"separate": [], "stacked": []}
    for _ in range(args.rounds):
        times["separate"].append(timed(lambda: separate(args.steps), device))
        times["stacked"].append(timed(lambda: stack(args.steps), device))
    sep, stk = statistics.median(times["separate"]), statistics.median(times["stacked"])
    images = k * args.batch * args.steps
    return {
        "model": args.model,
        "width": args.width,
        "batch": args.batch,
        "k_runs": k,
        "steps": args.steps,
        "rounds": args.rounds,
        "separate_images_per_s": round(images / sep, 1),
        "stacked_images_per_s": round(images / stk, 1),
        "stacked_vs_separate": round(sep / stk, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 steps x 1 round per k instead of 8 x 3")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=128, help="images per run and step")
    parser.add_argument("--ks", default="1,2,4,8", help="numbers of runs to stack")
    parser.add_argument("--out", default=str(OUT), help="folder for stack_<device>.csv")
    args = parser.parse_args()
    args.steps, args.rounds = (2, 1) if args.quick else (8, 3)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    prov = provenance(device)
    print(f"[bench] stack: {prov}", flush=True)
    rows = []
    for k in (int(k) for k in args.ks.split(",")):
        rows.append(bench_k(args, k, device))
        print(f"[bench] stack k={k}: {rows[-1]}", flush=True)
    write_table("stack", rows, prov, Path(args.out))


if __name__ == "__main__":
    main()
