"""(8) preset: steps/s of a study preset's own training step on this machine, with each speed setting off and on.

A preset's model, norm, optimizer, schedule and loss are built from its composed config (the nbs study's GPU preset:
ResNet-50 at 128 px with Ghost BN; its CPU preset: the half-width ResNet-20 on 28 px), trained by bnlab's own
epoch function on random uint8 images of the preset's input shape (image decoding is not timed: the GPU preset's
Imagenette is read by worker processes whatever the step does). On a CPU a GPU-scale batch is scaled down
(`cpu_batch`). Each variant changes one setting against the baseline (fp32, contiguous, eager, data on the device):
train.autocast bf16 / fp16, train.channels_last, train.compile, and the device loader turned off (each batch made on
the host and copied to the device in the step, as bnlab's loaders did before #31).
The rows carry each step's aten operators and FLOPs (bnlab.cost), from which bnlab.cost.fit_constants refits the
plan's time per operator and fraction of peak.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from bnlab.bench import interleaved

PRESETS = {  # name -> the overrides that compose it (a mid-grid NBS of the study: Ghost BN in the step)
    "nbs gpu": ["experiment=nbs", "scale=gpu", "norm.nbs=16"],
    "nbs cpu": ["experiment=nbs", "scale=cpu", "norm.nbs=16"],
}
OFF = ["train.autocast=null", "train.channels_last=false", "train.compile=false"]
SPEED_SETTINGS = {  # variant -> (overrides on top of OFF, data on the device)
    "baseline": ([], True),
    "+bf16": (["train.autocast=bf16"], True),
    "+fp16": (["train.autocast=fp16"], True),
    "+channels_last": (["train.channels_last=true"], True),
    "+compile": (["train.compile=true"], True),
    "-device loader": ([], False),
}


def compose_preset(preset: str, device: str, extra: list[str] = ()):
    from hydra import compose, initialize_config_dir

    from bnlab import CONF_DIR

    overrides = [*PRESETS[preset], f"device={device}", "logger=none", "train.progress=false", *OFF, *extra]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


class HostBatches:
    """A loader on the host whose batches are copied to `device` inside the step (blocking, pageable memory)."""

    def __init__(self, loader, device: str):
        self.loader, self.device = loader, torch.device(device)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            yield x.to(self.device), y.to(self.device)


class PresetStep:
    """One variant of a preset's training step: call it to time `n_batches` steps (seconds)."""

    def __init__(self, cfg, batch: int, n_batches: int, device: str, on_device: bool):
        from bnlab.cost import _sizes
        from bnlab.data.device_loader import DeviceLoader
        from bnlab.data.samplers.iid import IIDBatchSampler
        from bnlab.models import build_model
        from bnlab.norm import build_norm
        from bnlab.train.fast import grad_scaler, prepare_training_model
        from bnlab.train.losses import build_loss
        from bnlab.train.optim import Schedule, build_optimizer

        _, _, channels, size, classes = _sizes(cfg.data)
        self.shape, self.device, self.batch = (channels, size, classes), device, batch
        torch.manual_seed(0)
        self.model = build_model(cfg.model, build_norm(cfg.norm), channels, classes).to(device)
        self.optimizer = build_optimizer(cfg.optim, self.model)
        self.schedule = Schedule(cfg.schedule, self.optimizer, n_batches, int(cfg.train.epochs))
        self.loss_fn, self.scaler = build_loss(cfg.loss, classes), grad_scaler(cfg.train, device)
        self.net = prepare_training_model(self.model, cfg.train, device)
        images = torch.randint(0, 256, (batch * n_batches, channels, size, size), dtype=torch.uint8)
        labels = torch.randint(0, classes, (batch * n_batches,))
        sampler = IIDBatchSampler(labels, batch, seed=0)
        stats = [0.5] * channels, [0.25] * channels
        loader = DeviceLoader(images, labels, sampler, *stats, device=device if on_device else "cpu")
        self.loader = loader if on_device else HostBatches(loader, device)

    def __call__(self) -> float:
        from bnlab.train.loop import train_one_epoch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        args = (self.net, self.loader, self.loss_fn, self.optimizer, self.schedule, 0, False)
        train_one_epoch(*args, scaler=self.scaler)  # ends reading its loss: the queued steps are done
        return time.perf_counter() - t0


def _batch(cfg, device: str, cpu_batch: int) -> tuple[int, list[str]]:
    """The preset's SGD batch; on a CPU a GPU preset's is cut to `cpu_batch` (NBS at most the batch)."""
    batch = int(cfg.train.batch_size)
    if device != "cpu" or cfg.get("preset") != "gpu" or batch <= cpu_batch:
        return batch, []
    nbs = cfg.norm.get("nbs")
    return cpu_batch, [f"train.batch_size={cpu_batch}"] + ([f"norm.nbs={min(int(nbs), cpu_batch)}"] if nbs else [])


def _step_counts(cfg, batch: int) -> tuple[int | None, float]:
    """(aten operators, FLOPs) of one training step of `cfg` at `batch`, as bnlab plan counts them."""
    from bnlab.cost import _sizes, forward_flops_per_image, ops_per_training_step

    _, _, channels, size, classes = _sizes(cfg.data)
    ops = ops_per_training_step(cfg, channels, size, classes, batch)
    return ops, 3 * forward_flops_per_image(cfg, channels, size, classes) * batch


def _precision(variant: str, device: str) -> str:
    if variant in ("+bf16", "+fp16"):
        return variant[1:]
    return "tf32" if device.startswith("cuda") else "fp32"  # cuDNN runs fp32 convolutions on TF32 tensor cores


def bench_preset(presets, variants, n_batches: int, rounds: int, device: str, cpu_batch: int = 32) -> list[dict]:
    """One row per preset and variant: steps/s, images/s and the ratio to the preset's baseline step."""
    rows = []
    for preset in presets:
        batch, scaled = _batch(compose_preset(preset, device), device, cpu_batch)
        ops, flops = _step_counts(compose_preset(preset, device, scaled), batch)
        steps, warmup_s = {}, {}
        for variant in ["baseline", *(v for v in variants if v != "baseline")]:  # every ratio is to the baseline
            extra, on_device = SPEED_SETTINGS[variant]
            cfg = compose_preset(preset, device, [*scaled, *extra])
            steps[variant] = PresetStep(cfg, batch, n_batches, device, on_device)
            t0 = time.perf_counter()
            steps[variant]()  # warm-up: allocator, cuDNN autotuning, compile's graphs
            warmup_s[variant] = time.perf_counter() - t0
        medians = interleaved(steps, rounds, warmed=True)
        for variant, seconds in medians.items():
            rows.append(
                {
                    "preset": preset,
                    "variant": variant,
                    "batch": batch,
                    "batches": n_batches,
                    "rounds": rounds,
                    "steps_per_s": round(n_batches / seconds, 3),
                    "images_per_s": round(n_batches * batch / seconds, 1),
                    "ratio_vs_baseline": round(medians["baseline"] / seconds, 3),
                    "warmup_s": round(warmup_s[variant], 1),
                    "precision": _precision(variant, device),
                    "seconds_per_step": seconds / n_batches,
                    "ops_per_step": ops,
                    "flops_per_step": flops,
                }
            )
        ratios = ", ".join(f"{r['variant']} {r['ratio_vs_baseline']}x" for r in rows[-len(medians) :])
        print(f"[bench] preset {preset} ({device}, batch {batch}): {ratios}", flush=True)
    return rows


FIT_VARIANTS = ("baseline", "+bf16", "+fp16")  # the eager, contiguous steps whose operators the plan counts


def write_plan_constants(rows: list[dict], prov: dict, out: Path) -> Path:
    """results/bench/plan_constants_<GPU>.json (or _cpu.json): the plan's op_us and utilisation refit from the
    preset steps (bnlab.cost.fit_constants); `bnlab plan` reads the file of the GPU it runs on."""
    from bnlab.cost import constants_file, fit_constants, gpu_model

    gpu = gpu_model(prov["device_name"]) if prov["device"] == "cuda" else None
    steps = [r for r in rows if r["variant"] in FIT_VARIANTS]
    keys = ("preset", "variant", "batch", "precision", "seconds_per_step", "ops_per_step", "flops_per_step")
    fitted = {
        "gpu": gpu,
        **fit_constants(steps, gpu),
        "steps": [{k: r[k] for k in keys} for r in steps],
        **prov,
    }
    path = constants_file(out, gpu or prov["device"])
    path.write_text(json.dumps(fitted, indent=1) + "\n")
    op_us, util = fitted["op_us"], fitted["utilisation"]
    said = f"{op_us:.3g} us per operator" if op_us is not None else "operators not countable"
    said += ", no datasheet peak: bnlab plan keeps its GPU defaults" if util is None else f", utilisation {util:.3g}"
    print(f"[bench] plan constants ({gpu or prov['device']}): {said} -> {path}")
    return path
