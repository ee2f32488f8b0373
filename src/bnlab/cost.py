"""What a sweep job costs on a GPU, before it runs: optimizer steps, images, FLOPs, GPU-hours (`bnlab plan`).

FLOPs per image are measured, not guessed: one forward pass of the job's own model at its input shape under
torch.utils.flop_counter.FlopCounterMode (convolutions and matrix products; norms and activations are memory-bound
and not counted). A training image costs 3 forwards (forward + backward, the backward ~2x the forward: Kaplan et
al. 2020, "Scaling Laws for Neural Language Models", sec. 2.1), an evaluated image 1.

Time = max(FLOPs / (peak x utilisation), steps x ops per step x time per op): small CIFAR nets at small batches are
bound by launching kernels, not by arithmetic, so the second term counts the aten operators of one real training
step (forward + backward on the meta device, at the job's batch) at an assumed cost per operator.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

# Peak dense throughput, TFLOPS, from NVIDIA's datasheets (SXM parts; the datasheets print tensor-core figures "with
# sparsity": dense = half of those). fp32 = CUDA cores; tf32/bf16/fp16 = tensor cores.
# A100: "NVIDIA A100 Tensor Core GPU" datasheet (FP32 19.5; TF32 156; BF16/FP16 312).
# H100 (and H200, same compute): "NVIDIA H100 Tensor Core GPU" datasheet, SXM (FP32 67; TF32 989 and BF16/FP16 1979
# with sparsity). V100: "NVIDIA Tesla V100" datasheet, SXM2 (FP32 15.7; tensor FP16 125; no TF32/BF16).
# L40S: "NVIDIA L40S" datasheet (FP32 91.6; TF32 366 and BF16/FP16 733 with sparsity).
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "V100": {"fp32": 15.7, "tf32": 15.7, "bf16": 15.7, "fp16": 125.0},
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
    "L40S": {"fp32": 91.6, "tf32": 366.0 / 2, "bf16": 733.0 / 2, "fp16": 733.0 / 2},
    "H100": {"fp32": 67.0, "tf32": 989.0 / 2, "bf16": 1979.0 / 2, "fp16": 1979.0 / 2},
}
# Assumptions, not measurements (no GPU has run bnlab yet): the fraction of peak a job reaches, and the time one aten
# operator costs in eager PyTorch (Python dispatch + kernel launch). `bnlab plan --utilisation/--op-us` change them.
UTILISATION = 0.1
OP_MICROSECONDS = 10.0
# Measured instead where `make bench` ran on this GPU: results/bench/plan_constants_<GPU>.json (fit_constants, from
# the preset steps it timed); `bnlab plan` then uses that file's two values (measured_constants).
PEAKS_OF = {"H200": "H100"}  # a GPU priced with another's datasheet peaks (the H200 has the H100's compute)

# images per split, without downloading: CIFAR (Krizhevsky 2009: 50000 train / 10000 test), Fashion-MNIST (Xiao et
# al. 2017: 60000 / 10000), Imagenette2 (fast.ai's README for imagenette2: 9469 train / 3925 val)
DATASET_SIZES = {"cifar10": (50000, 10000), "cifar100": (50000, 10000), "fashion_mnist": (60000, 10000),
                 "imagenette": (9469, 3925)}  # fmt: skip
DATASET_SHAPES = {
    "cifar10": (3, 32, 10),
    "cifar100": (3, 32, 100),
    "fashion_mnist": (1, 28, 10),
    "imagenette": (3, None, 10),
}
# an ImageNet subset of the user's folder (data=imagenet100): ImageNet-100, the list of Tian et al. 2019 (CMC), has
# 126,689 train / 5,000 val images (its split as CMC's users count it); another class list is priced at ImageNet-1k's
# most per class, 1300 train and exactly 50 val (Russakovsky et al. 2015, ILSVRC-2012): an upper bound
IMAGENET100_SIZES = (126689, 5000)
IMAGENET_PER_CLASS = (1300, 50)
GLYPH_CLASSES = 808  # every distinct glyph at min_distance 0.04 (conf/data/glyphs.yaml)


@dataclass
class Cost:
    gpus: int  # ranks of the run, one GPU each (train.processes)
    steps: int  # optimizer steps
    micro_steps: int  # forward + backward passes (steps x train.accumulate)
    train_images: int
    eval_images: int
    flops_per_image: float  # forward, measured
    ops_per_step: int | None  # aten operators in one training step (None: could not be counted on meta)
    precision: str  # fp32 | tf32 | bf16 | fp16: which peak applies
    replay_batches: int = 0  # training batches forwarded again by evaluations (ema_frozen's EMA re-run)
    batch: int = 0  # images per replayed batch (per rank's share is not split: evaluation runs on one GPU)

    @property
    def flops(self) -> float:
        return self.flops_per_image * (3 * self.train_images + self.eval_images + self.replay_batches * self.batch)

    def gpu_hours(self, gpu: str, utilisation: float = UTILISATION, op_us: float = OP_MICROSECONDS) -> float:
        peak = PEAK_TFLOPS[PEAKS_OF.get(gpu, gpu)][self.precision] * 1e12
        compute = self.flops / (peak * utilisation)  # all GPUs' work, seconds
        launch = self.micro_steps * (self.ops_per_step or 0) * op_us * 1e-6 * self.gpus  # every rank launches every op
        launch += self.replay_batches * (self.ops_per_step or 0) / 3 * op_us * 1e-6  # a forward: ~1/3 of a step's ops
        return max(compute, launch) / 3600


def _sizes(data) -> tuple[int, int, int, int, int]:
    """(train images, val images, channels, image size, classes) of a data config, without reading the data."""
    name = str(data.name)
    if name == "glyphs":
        classes = int(data.get("num_classes") or GLYPH_CLASSES)
        n_train, n_val = classes * int(data.train_per_class), classes * int(data.test_per_class)
        channels, size = 1, int(data.image_size)
    elif name == "imagenet_subset":
        n_train, n_val, classes = _imagenet_subset_sizes(str(data.classes))
        channels, size = 3, int(data.image_size)
    elif name == "synthetic":
        n_train, n_val, classes = int(data.n_train), int(data.n_test), int(data.num_classes)
        channels, size = int(data.channels), int(data.image_size)
    else:
        n_train, n_val = DATASET_SIZES[name]
        channels, size, classes = DATASET_SHAPES[name]
        size = int(data.get("image_size") or size)
    if data.get("val_source") == "holdout":
        n_train, n_val = n_train - int(data.holdout), int(data.holdout)
    imbalance = data.get("imbalance")
    if imbalance:  # the named classes keep a fraction of their (equal) share
        share = n_train / classes
        n_train = int(n_train - len(imbalance.classes) * share * (1 - float(imbalance.keep_fraction)))
    n_train = min(n_train, int(data.get("train_subset") or n_train))
    n_val = min(n_val, int(data.get("val_subset") or n_val))
    return n_train, n_val, channels, size, classes


def _imagenet_subset_sizes(classes: str) -> tuple[int, int, int]:
    """(train, val, classes) of an ImageNet subset from its class list alone (no folder is read)."""
    from bnlab.data.imagenet_subset import class_list

    n = len(class_list(classes))
    if classes == "imagenet100":
        return (*IMAGENET100_SIZES, n)
    return n * IMAGENET_PER_CLASS[0], n * IMAGENET_PER_CLASS[1], n


def _model(cfg, channels: int, classes: int):
    from bnlab.models import build_model
    from bnlab.norm import build_norm

    return build_model(cfg.model, build_norm(cfg.norm), channels, classes)


def forward_flops_per_image(cfg, channels: int, size: int, classes: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model = _model(cfg, channels, classes).eval()  # eval: batch statistics need no group of a given size
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(2, channels, size, size))
    return counter.get_total_flops() / 2


def ops_per_training_step(cfg, channels: int, size: int, classes: int, batch: int) -> int | None:
    """aten operators dispatched by one forward + backward at the job's per-rank batch, on the meta device (shapes
    only, nothing computed); None where a layer needs real values (a data-dependent branch)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    try:
        model = _model(cfg, channels, classes).to("meta").train()
        x = torch.zeros(batch, channels, size, size, device="meta")
        with Count():
            model(x).sum().backward()
    except Exception:  # noqa: BLE001 - an estimate without the launch term is still an estimate
        return None
    params = sum(1 for p in model.parameters() if p.requires_grad)
    return Count.n + 3 * params  # + the optimizer's per-parameter update (SGD momentum: ~3 ops per tensor)


def eval_images_per_epoch(cfg, n_train: int, n_val: int) -> int:
    """Images each evaluation forwards, every mode of train/evaluate.py's EVAL_MODES: the validation set per mode
    (precise first recomputes statistics over its training samples, adaptive over the validation set; ema_frozen's
    re-run is `ema_frozen_replays`), the target domain again, eval.train_images, the health monitor's batches."""
    ev = cfg.eval
    modes = list(ev.get("modes") or [])
    samples = ev.get("precise_samples") or 0
    samples = list(samples) if not isinstance(samples, int) else [samples]
    images = 0
    for m in modes:
        runs = len(samples) if m in ("precise", "adaptive") else 1  # one evaluation per precise_samples size
        images += runs * n_val
        if m == "precise":
            images += sum(min(s, n_train) for s in samples)
        if m == "adaptive":
            images += sum(min(s, n_val) for s in samples)
    images *= _domains(cfg)
    images += int(ev.get("train_images") or 0)
    health = cfg.get("health") or {}
    if health.get("enabled"):
        images += (int(health.get("batches", 0)) + int(health.get("val_batches", 0))) * int(cfg.train.batch_size)
    return images


def _domains(cfg) -> int:
    """Evaluations per mode: the source validation set, and the shifted target domain's when there is one."""
    return 1 if str((cfg.get("domains") or {}).get("name", "none")) == "none" else 2


def ema_frozen_replays(cfg, micro_per_epoch: int) -> int:
    """Training batches the ema_frozen evaluations forward in a whole run: after epoch e, every micro-batch trained
    so far (e x micro_per_epoch), at most eval.ema_frozen_steps: quadratic in the epochs unless capped."""
    if "ema_frozen" not in list(cfg.eval.get("modes") or []):
        return 0
    cap = cfg.eval.get("ema_frozen_steps")
    per_epoch = [e * micro_per_epoch for e in range(1, int(cfg.train.epochs) + 1)]
    return _domains(cfg) * sum(min(n, int(cap)) if cap else n for n in per_epoch)


_MEASURED: dict[str, tuple[float, int | None]] = {}  # the model's measurements, shared by jobs that differ in seed/lr


def _measured(cfg, channels: int, size: int, classes: int, batch: int) -> tuple[float, int | None]:
    from omegaconf import OmegaConf

    key = (
        OmegaConf.to_yaml(OmegaConf.create({"model": cfg.model, "norm": cfg.norm}))
        + f"{channels},{size},{classes},{batch}"
    )
    if key not in _MEASURED:
        _MEASURED[key] = (
            forward_flops_per_image(cfg, channels, size, classes),
            ops_per_training_step(cfg, channels, size, classes, batch),
        )
    return _MEASURED[key]


def job_cost(cfg) -> Cost:
    n_train, n_val, channels, size, classes = _sizes(cfg.data)
    batch, accumulate = int(cfg.train.batch_size), int(cfg.train.get("accumulate") or 1)
    processes = int(cfg.train.get("processes") or 1)
    flops, ops = _measured(cfg, channels, size, classes, batch // processes)
    micro = int(cfg.train.get("batches_per_epoch") or max(1, n_train // batch))
    epochs = int(cfg.train.epochs)
    steps = epochs * math.ceil(micro / accumulate)
    autocast = cfg.train.get("autocast")
    precision = str(autocast) if autocast else "tf32"  # fp32 convs run on TF32 tensor cores (cuDNN's default)
    return Cost(
        gpus=processes,
        steps=steps,
        micro_steps=epochs * micro,
        train_images=epochs * micro * batch,
        eval_images=epochs * eval_images_per_epoch(cfg, n_train, n_val),
        flops_per_image=flops,
        ops_per_step=ops,
        precision=precision,
        replay_batches=ema_frozen_replays(cfg, micro),
        batch=batch,
    )


def gpu_model(device_name: str) -> str | None:
    """The GPU model in a CUDA device name ('NVIDIA H100 80GB HBM3' -> 'H100'), None when bnlab has no peaks for it."""
    name = device_name.upper()
    return next((model for model in [*PEAKS_OF, *PEAK_TFLOPS] if model in name), None)


def present_gpu() -> str | None:
    """The model of this machine's first CUDA device (None: no CUDA, or a GPU without datasheet peaks here)."""
    return gpu_model(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else None


def fit_constants(steps: list[dict], gpu: str | None) -> dict:
    """The plan's op_us and utilisation refit from timed training steps (dicts: seconds_per_step, ops_per_step,
    flops_per_step, precision). The plan says time >= ops x op_us and time >= FLOPs / (peak x utilisation), each an
    equality where it binds; so the tightest values the steps allow are op_us = min(time / ops) (set by the most
    launch-bound step) and utilisation = max(FLOPs / (peak x time)) (the most compute-bound). Utilisation is None
    without a datasheet peak (`gpu` None: a CPU)."""
    counted = [s for s in steps if s.get("ops_per_step")]
    op_us = min(s["seconds_per_step"] / s["ops_per_step"] for s in counted) * 1e6 if counted else None
    utilisation = None
    if gpu is not None and steps:
        peaks = PEAK_TFLOPS[PEAKS_OF.get(gpu, gpu)]
        achieved = [s["flops_per_step"] / s["seconds_per_step"] / (peaks[s["precision"]] * 1e12) for s in steps]
        utilisation = max(achieved)
    return {"op_us": op_us, "utilisation": utilisation}


def constants_file(folder: Path, device: str) -> Path:
    return Path(folder) / f"plan_constants_{device}.json"


def measured_constants(gpu: str | None, folder: Path) -> dict | None:
    """The constants `make bench` measured on a `gpu` (its plan_constants file in `folder`), None when there is no
    such file or it holds no GPU's fit (a CPU's: the plan then keeps its assumed GPU values)."""
    path = constants_file(folder, gpu) if gpu is not None else None
    if path is None or not path.exists():
        return None
    measured = json.loads(path.read_text())
    if measured.get("gpu") != gpu or measured.get("utilisation") is None or measured.get("op_us") is None:
        return None
    return {**measured, "path": str(path)}
