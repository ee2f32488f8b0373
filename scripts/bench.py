"""`make bench`: every performance table of issue #11, measured side by side and written to results/bench/.

    python scripts/bench.py [--sections norm,train,overhead,sweep,studies,stack] [--quick]

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

Each table is printed and written as CSV with device, versions and date; results/bench/README.md explains them.
The machine these were measured on is shared with other jobs: compare ratios within one table (one run).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "results" / "bench"
MODELS = ("resnet20", "resnet56", "convnet8")
FAST_PATHS = {
    "bnlab": [],
    "bnlab +channels_last": ["train.channels_last=true"],
    "bnlab +bf16": ["train.autocast=bf16"],
    "bnlab +compile": ["train.compile=true"],
}


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


# ---- (2) and (3): training throughput -------------------------------------------------------------------------


def compose(model: str, extra: list[str] = ()):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from bnlab.train.__main__ import CONF_DIR

    overrides = [f"model={model}", "scale=cpu", "device=cpu", "logger=none", "train.progress=false", *extra]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


class Setup:
    """Model, optimizer, schedule, loss and data of one config, as bnlab.runner.run builds them."""

    def __init__(self, model: str, extra: list[str] = ()):
        from bnlab.data import build_data
        from bnlab.models import build_model
        from bnlab.norm import build_norm
        from bnlab.train.fast import prepare_training_model
        from bnlab.train.losses import build_loss
        from bnlab.train.optim import Schedule, build_optimizer

        self.cfg = cfg = compose(model, extra)
        torch.manual_seed(0)
        self.data = build_data(cfg, "cpu")
        self.model = build_model(cfg.model, build_norm(cfg.norm), self.data.in_channels, self.data.num_classes)
        self.optimizer = build_optimizer(cfg.optim, self.model)
        self.schedule = Schedule(cfg.schedule, self.optimizer, len(self.data.train), int(cfg.train.epochs))
        self.loss_fn = build_loss(cfg.loss, self.data.num_classes)
        self.net = prepare_training_model(self.model, cfg.train, "cpu")


def plain_batches(setup: Setup, n: int):
    """The same images as bnlab's loader, normalized once, as a list of in-memory (x, y) batches."""
    loader = setup.data.train
    b = int(setup.cfg.train.batch_size)
    x_all = loader.transform(loader.images[: n * b])
    y_all = loader.labels[: n * b]
    return [(x_all[i * b : (i + 1) * b].contiguous(), y_all[i * b : (i + 1) * b]) for i in range(n)]


def run_plain(model, batches, lr: float) -> float:
    """The reference: forward, cross-entropy, SGD step; nothing else. Returns seconds."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    t0 = time.perf_counter()
    for x, y in batches:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def run_bnlab(setup: Setup, n: int) -> float:
    """bnlab's training epoch function on bnlab's loader, `n` batches. Returns seconds."""
    from bnlab.train.loop import train_one_epoch

    setup.data.train.batch_sampler.batches_per_epoch = n
    t0 = time.perf_counter()
    train_one_epoch(setup.net, setup.data.train, setup.loss_fn, setup.optimizer, setup.schedule, 0, False)
    return time.perf_counter() - t0


def interleaved(fns: dict, rounds: int) -> dict[str, float]:
    """Median seconds of each timed function over `rounds`, after one warm-up call each (allocator, kernels).
    Interleaved, one call of each per round, so load from other jobs on the machine hits every variant alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(fn())
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_train(models, n_batches: int, rounds: int, with_compile: tuple[str, ...]) -> list[dict]:
    rows = []
    for model in models:
        base = Setup(model, [f"train.batches_per_epoch={n_batches}"])
        b = int(base.cfg.train.batch_size)
        batches = plain_batches(base, n_batches)
        plain_model = base.model
        plain_cl = Setup(model, [f"train.batches_per_epoch={n_batches}"]).model.to(memory_format=torch.channels_last)
        batches_cl = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]
        variants = {
            "plain": lambda m=plain_model, bs=batches: run_plain(m, bs, 0.01),
            "plain +channels_last": lambda m=plain_cl, bs=batches_cl: run_plain(m, bs, 0.01),
        }
        compile_s = {}
        for name, extra in FAST_PATHS.items():
            if name.endswith("compile") and model not in with_compile:
                continue
            s = Setup(model, [f"train.batches_per_epoch={n_batches}", *extra])
            t0 = time.perf_counter()
            run_bnlab(s, 2)  # warm-up; for compile: the compilations of the training shapes
            compile_s[name] = time.perf_counter() - t0
            variants[name] = lambda s=s: run_bnlab(s, n_batches)
        medians = interleaved(variants, rounds)
        ref = medians["plain"]
        for name, med in medians.items():
            rows.append(
                {
                    "model": model,
                    "variant": name,
                    "batch": b,
                    "batches": n_batches,
                    "rounds": rounds,
                    "images_per_s": round(n_batches * b / med, 1),
                    "ratio_vs_plain": round(ref / med, 3),
                    "warmup_s": round(compile_s.get(name, 0.0), 1),
                }
            )
        done = ", ".join(f"{r['variant']} {r['images_per_s']}" for r in rows[-len(medians) :])
        print(f"[bench] train {model}: {done}", flush=True)
    return rows


NORM_CONFIGS = {  # the normalizations the CPU presets train with (Ghost groups of 2 / 8 / 32 in the NBS study)
    "BN": [],
    "Ghost nbs=2": ["norm=ghost", "norm.nbs=2"],
    "Ghost nbs=8": ["norm=ghost", "norm.nbs=8"],
    "Ghost nbs=32": ["norm=ghost", "norm.nbs=32"],
    "Ghost nbs=8 strided": ["norm=ghost", "norm.nbs=8", "norm.ghost_layout=strided"],
    "Batch Renorm": ["norm=renorm"],
    "Batch Renorm nbs=4": ["norm=renorm", "norm.nbs=4"],
    "GroupNorm": ["norm=group"],
}


def bench_norm_train(n_batches: int, rounds: int, model: str = "resnet20") -> list[dict]:
    """The plain training step of `model` with each normalization of NORM_CONFIGS; ratio = time / BN's time."""
    base = Setup(model, [f"train.batches_per_epoch={n_batches}"])
    batches = plain_batches(base, n_batches)
    models = {
        name: Setup(model, [f"train.batches_per_epoch={n_batches}", *extra]).model
        for name, extra in NORM_CONFIGS.items()
    }
    medians = interleaved({name: lambda m=m: run_plain(m, batches, 0.01) for name, m in models.items()}, rounds)
    ref, b = medians["BN"], len(batches[0][0])
    rows = []
    for name, med in medians.items():
        rows.append(
            {
                "model": model,
                "norm": name,
                "batch": b,
                "batches": n_batches,
                "rounds": rounds,
                "images_per_s": round(n_batches * b / med, 1),
                "time_vs_bn": round(med / ref, 3),
            }
        )
    print("[bench] norm_train " + ", ".join(f"{r['norm']} {r['time_vs_bn']}x" for r in rows), flush=True)
    return rows


def bench_overhead(models, n_batches: int) -> list[dict]:
    """Per epoch of the CPU preset: training, data loading alone, evaluation and monitor, in seconds."""
    from bnlab.diagnostics import build_monitor
    from bnlab.train.evaluate import evaluate
    from bnlab.train.loop import eval_variants

    rows = []
    for model in models:
        s = Setup(model)
        loader = s.data.train
        full = len(loader.batch_sampler)
        run_bnlab(s, 2)
        train_s = run_bnlab(s, n_batches) / n_batches * full
        loader.batch_sampler.batches_per_epoch = None
        t0 = time.perf_counter()
        for _ in loader:
            pass
        data_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        row = {}
        for mode, suffix, samples in eval_variants(s.cfg.eval):
            for k, v in evaluate(s.model, s.data.val, s.loss_fn, mode, loader, samples).items():
                row[f"val_{k}_{suffix}"] = v
        eval_s = time.perf_counter() - t0
        monitor = build_monitor(s.cfg)
        t0 = time.perf_counter()
        if monitor is not None:
            monitor.check(s.model, loader, row, epoch=1)
        monitor_s = time.perf_counter() - t0
        total = train_s + eval_s + monitor_s
        rows.append(
            {
                "model": model,
                "batches_per_epoch": full,
                "train_s": round(train_s, 2),
                "data_loader_alone_s": round(data_s, 2),
                "eval_s": round(eval_s, 2),
                "eval_modes": "+".join(s.cfg.eval.modes),
                "monitor_s": round(monitor_s, 2),
                "data_share": round(data_s / total, 3),
                "eval_share": round(eval_s / total, 3),
                "monitor_share": round(monitor_s / total, 3),
            }
        )
        print(f"[bench] overhead {model}: {rows[-1]}")
    return rows


# ---- (4): sweep throughput ------------------------------------------------------------------------------------


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
                [sys.executable, __file__, "--worker", "--model", model, "--threads", str(threads)]
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


# ---- (5): study wall times ------------------------------------------------------------------------------------


def bench_studies() -> list[dict]:
    import pandas as pd

    rows = []
    for path in sorted(ROOT.glob("results/*/cpu/runs.csv")):
        df = pd.read_csv(path)
        wall = df["wall_time"].dropna()
        rows.append(
            {
                "study": path.parts[-3],
                "runs": len(df),
                "sum_of_run_wall_min": round(wall.sum() / 60, 1),
                "median_run_s": round(wall.median(), 1),
                "max_run_s": round(wall.max(), 1),
                "source": str(path.relative_to(ROOT)),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="norm,norm_train,train,overhead,sweep,studies,stack")
    parser.add_argument("--quick", action="store_true", help="fewer batches and rounds")
    parser.add_argument("--models", default=",".join(MODELS), help="models of the train and overhead tables")
    parser.add_argument("--compile-models", default="", help="models also timed with train.compile=true")
    parser.add_argument("--norm-shapes", default="cifar,imagenet", help="shapes of the norm table")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", default="resnet20", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=8.0, help=argparse.SUPPRESS)
    parser.add_argument("--ready", help=argparse.SUPPRESS)
    parser.add_argument("--go", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    os.environ.setdefault("WANDB_MODE", "disabled")
    sections, models = args.sections.split(","), args.models.split(",")
    OUT.mkdir(parents=True, exist_ok=True)
    prov = provenance()
    print(f"[bench] {prov}")
    if "norm" in sections:
        cmd = [sys.executable, str(ROOT / "scripts" / "bench_norm.py"), "--device", prov["device"]]
        subprocess.run([*cmd, "--shapes", args.norm_shapes] + (["--quick"] if args.quick else []), check=True)
    if "norm_train" in sections:
        write_table(f"norm_train_{torch.get_num_threads()}t", bench_norm_train(8 if args.quick else 15, 3), prov)
    if "train" in sections:
        compiled = tuple(args.compile_models.split(","))
        rows = bench_train(models, 8 if args.quick else 15, 2 if args.quick else 3, compiled)
        write_table("train", rows, prov)
    if "overhead" in sections:
        write_table("overhead", bench_overhead(models, 8 if args.quick else 15), prov)
    if "sweep" in sections:
        write_table("sweep", bench_sweep("resnet20", 5.0 if args.quick else 8.0, 1 if args.quick else 2), prov)
    if "studies" in sections:
        write_table("studies", bench_studies(), prov)
    if "stack" in sections:  # its own script: scripts/bench_stack.py
        cmd = [sys.executable, str(ROOT / "scripts" / "bench_stack.py"), "--device", prov["device"]]
        subprocess.run(cmd + (["--quick"] if args.quick else []), check=True)


if __name__ == "__main__":
    main()
