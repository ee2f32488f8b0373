"""`make bench`: every performance table of issue #11, measured side by side and written to results/bench/.

    python scripts/bench.py [--sections norm,train,overhead,sweep,studies,stack,preset] [--quick] [--out DIR]

(1) norm: each norm variant / nn.BatchNorm2d, contiguous and channels_last (scripts/bench_norm.py).
(2) train: images/s of a plain reference loop written here (tensors in memory, fp32, model + loss + SGD, nothing
    else) beside bnlab's own loop (bnlab.train.loop.train_one_epoch on bnlab's data loader) with each fast path
    on / off, for resnet20, resnet56 and convnet8 at the CPU preset (width 0.5, batch 128, Fashion-MNIST).
    Interleaved rounds, median; compile is timed after its warm-up, the compile time is reported beside it.
(3) overhead: per epoch of the CPU preset, seconds of training, of the data loader alone, of evaluation
    (eval.modes) and of the BN health monitor, and their shares of the epoch.
(4) sweep: aggregate images/s of N concurrent training processes x T threads (1x2, 2x1, 1, 2, 4, 8 runs).
(5) studies: each study's CPU preset wall time, from the committed results/<study>/cpu/runs.csv (sum of the
    runs' own wall times: a sequential sweep's duration; not re-run here).
(6) norm_train: the training step of resnet20 at the CPU preset (plain loop, same batches) with each
    normalization the studies train with, as images/s / the step with plain BN: what a norm layer costs in a real
    network, whose small activations (8-32 channels, 7-28 px) the single-layer table does not cover.
(7) stack: aggregate training images/s of k = 1, 2, 4, 8 resnet20 runs stacked into one process with torch.func
    (bnlab.train.stacked) against the same k runs stepped one after another (scripts/bench_stack.py).

(8) preset: steps/s of a study preset's own training step (the nbs study's GPU preset, ResNet-50 at 128 px, and its
    CPU preset) on the present device, baseline (fp32, contiguous, eager, data on the device) beside each speed
    setting turned on (train.autocast bf16 / fp16, train.channels_last, train.compile) and the device loader turned
    off; on a CPU the GPU preset's batch is cut to --cpu-batch. From the same steps it writes
    plan_constants_<GPU>.json (or _cpu.json): the time per operator and the fraction of peak that `bnlab plan`
    uses on that GPU (bnlab.cost.fit_constants; a CPU's file is written, the plan keeps its GPU defaults).

Each table is printed and written as CSV with device, versions and date; results/bench/README.md explains them.
The measurements live in src/bnlab/bench/ (setup, train, concurrent, studies); this file is the command line.
The machine these were measured on is shared with other jobs: compare ratios within one table (one run).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import torch

from bnlab.bench import OUT, ROOT, provenance, write_table
from bnlab.bench.concurrent import bench_sweep
from bnlab.bench.preset import PRESETS, SPEED_SETTINGS, bench_preset, write_plan_constants
from bnlab.bench.studies import bench_studies
from bnlab.bench.train import bench_norm_train, bench_overhead, bench_train

MODELS = ("resnet20", "resnet56", "convnet8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="norm,norm_train,train,overhead,sweep,studies,stack,preset")
    parser.add_argument("--quick", action="store_true", help="fewer batches and rounds")
    parser.add_argument("--models", default=",".join(MODELS), help="models of the train and overhead tables")
    parser.add_argument("--compile-models", default="", help="models also timed with train.compile=true")
    parser.add_argument("--norm-shapes", default="cifar,imagenet", help="shapes of the norm table")
    parser.add_argument("--presets", default=",".join(PRESETS), help="presets of the preset table")
    parser.add_argument("--preset-variants", default=",".join(SPEED_SETTINGS), help="speed settings timed there")
    parser.add_argument("--cpu-batch", type=int, default=32, help="a GPU preset's batch when timed on a CPU")
    parser.add_argument("--out", default=None, help="folder of the tables (default results/bench/; not stack's)")
    args = parser.parse_args()
    out = Path(args.out) if args.out else OUT
    os.environ.setdefault("WANDB_MODE", "disabled")
    sections, models = args.sections.split(","), args.models.split(",")
    out.mkdir(parents=True, exist_ok=True)
    prov = provenance()
    print(f"[bench] {prov}")
    if "norm" in sections:
        cmd = [sys.executable, str(ROOT / "scripts" / "bench_norm.py"), "--device", prov["device"]]
        cmd += ["--shapes", args.norm_shapes, "--out", str(out)]
        subprocess.run(cmd + (["--quick"] if args.quick else []), check=True)
    if "norm_train" in sections:
        write_table(f"norm_train_{torch.get_num_threads()}t", bench_norm_train(8 if args.quick else 15, 3), prov, out)
    if "train" in sections:
        compiled = tuple(args.compile_models.split(","))
        rows = bench_train(models, 8 if args.quick else 15, 2 if args.quick else 3, compiled)
        write_table("train", rows, prov, out)
    if "overhead" in sections:
        write_table("overhead", bench_overhead(models, 8 if args.quick else 15), prov, out)
    if "sweep" in sections:
        write_table("sweep", bench_sweep("resnet20", 5.0 if args.quick else 8.0, 1 if args.quick else 2), prov, out)
    if "studies" in sections:
        write_table("studies", bench_studies(), prov, out)
    if "stack" in sections:  # its own script: scripts/bench_stack.py
        cmd = [sys.executable, str(ROOT / "scripts" / "bench_stack.py"), "--device", prov["device"]]
        subprocess.run(cmd + (["--quick"] if args.quick else []), check=True)
    if "preset" in sections:
        presets, variants = args.presets.split(","), args.preset_variants.split(",")
        n, rounds = (3, 1) if args.quick else (10, 3)
        rows = bench_preset(presets, variants, n, rounds, prov["device"], args.cpu_batch)
        write_table("preset", rows, prov, out)
        write_plan_constants(rows, prov, out)


if __name__ == "__main__":
    main()
