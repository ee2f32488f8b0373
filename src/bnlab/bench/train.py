"""(2) train: images/s of the plain loop and of bnlab's loop with each fast path; (6) norm_train: the training
step with each normalization; (3) overhead: seconds per epoch of training, loading, evaluation and health."""

from __future__ import annotations

import time

import torch

from bnlab.bench import interleaved
from bnlab.bench.setup import Setup, plain_batches, run_bnlab, run_plain

FAST_PATHS = {
    "bnlab": [],
    "bnlab +channels_last": ["train.channels_last=true"],
    "bnlab +bf16": ["train.autocast=bf16"],
    "bnlab +compile": ["train.compile=true"],
}


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
    from bnlab.train.evaluate import eval_variants, evaluate

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
