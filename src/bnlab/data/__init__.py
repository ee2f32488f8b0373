"""`build_data(cfg, device)`: dataset -> split -> imbalance -> normalization constants -> samplers -> loaders.

Small datasets (Fashion-MNIST, CIFAR, synthetic) live on the device as uint8 and go through DeviceLoader;
Image folders (Imagenette, an ImageNet subset) are decoded by DataLoader workers (WorkerLoader). Both take the same
batch samplers and give the training loop the same interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import Subset

from bnlab.config_errors import ConfigError
from bnlab.data.augment import BatchAugment
from bnlab.data.cifar import load_cifar
from bnlab.data.device_loader import DeviceLoader
from bnlab.data.domains import validate_domains, with_domains
from bnlab.data.errors import DatasetNotFoundError
from bnlab.data.fashion_mnist import load_fashion_mnist
from bnlab.data.glyphs import load_glyphs
from bnlab.data.imbalance import imbalance_indices
from bnlab.data.samplers import (
    SequentialBatchSampler,
    build_batch_sampler,
    build_eval_sampler,
    validate_sampler_config,
)
from bnlab.data.synthetic import make_synthetic
from bnlab.data.worker_loader import WorkerLoader
from bnlab.registry import Registry

# keys every dataset has, read by build_data itself (splits, subsets, imbalance, augmentation)
SHARED_KEYS = (
    "val_source", "holdout", "split_seed", "train_subset", "val_subset", "imbalance", "image_size",
    "crop_padding", "flip",
)  # fmt: skip
# name -> loader(its own data keys): (train_x uint8 NCHW, train_y, test_x, test_y, num_classes) for the in-memory
# datasets, a Streamed source for those decoded by DataLoader workers
DATASETS = Registry("data")


@DATASETS.register("fashion_mnist")
def fashion_mnist(root, download: bool):
    return load_fashion_mnist(root, download)


@DATASETS.register("cifar10")
def cifar10(root, download: bool, verify_checksums: bool):
    return load_cifar(10, root, download, verify_checksums)


@DATASETS.register("cifar100")
def cifar100(root, download: bool, verify_checksums: bool):
    return load_cifar(100, root, download, verify_checksums)


@DATASETS.register("synthetic")
def synthetic(n_train: int, n_test: int, num_classes: int, channels: int, image_size: int, noise: float, seed: int):
    return make_synthetic(int(n_train), int(n_test), int(num_classes), int(channels), int(image_size), float(noise),
                          int(seed))  # fmt: skip


@DATASETS.register("glyphs")
def rendered_glyphs(num_classes, train_per_class: int, test_per_class: int, holdout_style, min_distance: float, jitter,
           seed: int, cache_dir, image_size: int = 28):  # fmt: skip
    return load_glyphs(dict(locals()))  # rendered from matplotlib's DejaVu fonts, cached (data/glyphs.py)


@dataclass
class Streamed:
    """An image-folder dataset decoded by DataLoader workers: its keys, read when the loaders are built."""

    keys: dict


# named *_folder: a function named `imagenette` here would shadow the module bnlab.data.imagenette
@DATASETS.register("imagenette")
def imagenette_folder(root, download: bool, variant: str, image_size: int, num_workers: int, stats_images: int,
                      random_resized_crop: bool, flip: bool) -> Streamed:  # fmt: skip
    return Streamed(dict(locals()))


@DATASETS.register("imagenet_subset")
def imagenet_subset_folder(root, classes: str, image_size: int, num_workers: int, stats_images: int,
                           random_resized_crop: bool, flip: bool) -> Streamed:  # fmt: skip
    return Streamed(dict(locals()))  # the user's own ImageNet folder, the classes of a list (data/imagenet_subset.py)


@dataclass
class DataBundle:
    train: DeviceLoader | WorkerLoader
    val: DeviceLoader | WorkerLoader  # every validation image once
    num_classes: int
    in_channels: int
    image_size: int
    info: dict = field(default_factory=dict)  # sizes and normalization constants, recorded in summary.json
    val_batch: DeviceLoader | WorkerLoader | None = None  # eval.sampler's batches, for eval mode "batch"
    train_eval: DeviceLoader | None = None  # eval.train_images training images, unaugmented, each once
    target_val: DeviceLoader | None = None  # the shifted target domain's validation set (data/domains.py)


def channel_stats(images_uint8: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of the training images in [0, 1] (computed, not hard-coded, and recorded)."""
    x = images_uint8.float().div_(255).transpose(0, 1).reshape(images_uint8.shape[1], -1)
    return x.mean(1).tolist(), x.std(1).tolist()


def _subset(idx: torch.Tensor, n, seed: int) -> torch.Tensor:
    if n is None or n >= len(idx):
        return idx
    return idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))[:n]]


def split_indices(train_y, test_y, dcfg, num_classes: int):
    """(train indices into the official training set, val indices, val_from_train): every run and arm with the
    same data config gets the same split, whatever its seed."""
    split_seed = int(dcfg.get("split_seed", 0))
    train_idx = torch.arange(len(train_y))
    val_idx, val_from_train = torch.arange(len(test_y)), False
    if dcfg.get("val_source", "test") == "holdout":
        n_val = int(dcfg.holdout)
        if not 0 < n_val < len(train_y):
            raise ConfigError("data.holdout", f"must be in [1, {len(train_y)}) for this dataset, got {n_val}")
        perm = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(split_seed))
        val_idx, train_idx, val_from_train = perm[:n_val], perm[n_val:], True
    train_idx = _subset(train_idx, dcfg.get("train_subset"), split_seed + 1)
    val_idx = _subset(val_idx, dcfg.get("val_subset"), split_seed + 2)
    if dcfg.get("imbalance"):
        train_idx = train_idx[imbalance_indices(train_y[train_idx], dcfg.imbalance, num_classes, split_seed + 3)]
    return train_idx, val_idx, val_from_train


def _check_enough_images(cfg, n_train: int) -> None:
    """i.i.d. batches drop the last partial one: fewer images than a batch would make an epoch of no step."""
    batch, scfg = cfg.train.get("batch_size"), cfg.sampler
    if scfg.get("name") == "iid" and scfg.get("drop_last", True) and isinstance(batch, int) and n_train < batch:
        raise ConfigError(
            "data.train_subset",
            f"{n_train} training images make no full batch of train.batch_size={batch} (sampler.drop_last=true); "
            f"use at least {batch} images (data.train_subset) or a smaller train.batch_size",
        )


def _samplers(cfg, train_y, val_y):
    """(training sampler, every validation image once, eval.sampler's batches or None when sequential).

    Only batch-statistics evaluation depends on how validation batches are formed; EMA, Precise and Adaptive BN
    evaluate each image once whatever eval.sampler says."""
    _check_enough_images(cfg, len(train_y))
    tcfg = cfg.train
    train_sampler = build_batch_sampler(
        cfg.sampler, train_y, int(tcfg.batch_size), int(cfg.seed), tcfg.get("batches_per_epoch")
    )
    eval_bs = int(cfg.eval.get("batch_size") or tcfg.batch_size)
    # eval batches are fixed by the data split, not the run seed: every arm is validated on the same batches
    val_sampler = build_eval_sampler(cfg.eval.get("sampler"), val_y, eval_bs, int(cfg.data.get("split_seed", 0)))
    if isinstance(val_sampler, SequentialBatchSampler):
        return train_sampler, val_sampler, None
    return train_sampler, SequentialBatchSampler(len(val_y), eval_bs), val_sampler


def _info(name, train_y, val_y, num_classes, mean, std, **extra) -> dict:
    counts = torch.bincount(train_y, minlength=num_classes).tolist()
    sizes = {"n_train": len(train_y), "n_val": len(val_y), "num_classes": num_classes, "train_class_counts": counts}
    return {"dataset": name, **sizes, "norm_mean": mean, "norm_std": std, **extra}


def _build_in_memory(cfg, device, source) -> DataBundle:
    dcfg = cfg.data
    train_x, train_y, test_x, test_y, num_classes = source
    size = dcfg.get("image_size")
    if size is not None and size != train_x.shape[-1]:
        raise ConfigError("data.image_size", f"{dcfg.name} images are {train_x.shape[-1]} px, got {size}")
    train_idx, val_idx, val_from_train = split_indices(train_y, test_y, dcfg, num_classes)
    val_x, val_y = (train_x, train_y) if val_from_train else (test_x, test_y)
    val_x, val_y = val_x[val_idx], val_y[val_idx]
    train_x, train_y = train_x[train_idx], train_y[train_idx]

    mean, std = channel_stats(train_x)
    augment = BatchAugment(int(dcfg.crop_padding), bool(dcfg.flip))
    train_sampler, val_sampler, val_batch_sampler = _samplers(cfg, train_y, val_y)
    train = DeviceLoader(train_x, train_y, train_sampler, mean, std, augment, seed=int(cfg.seed), device=device)
    val = DeviceLoader(val_x, val_y, val_sampler, mean, std, device=device)
    val_batch = None
    if val_batch_sampler is not None:
        val_batch = DeviceLoader(val_x, val_y, val_batch_sampler, mean, std, device=device)
    train_eval = None
    n_train_eval = int(cfg.eval.get("train_images", 0) or 0)
    if n_train_eval:  # a fixed seeded subset, the same for every run and arm of this data config
        idx = _subset(torch.arange(len(train_y)), n_train_eval, int(dcfg.get("split_seed", 0)) + 4)
        eval_bs = int(cfg.eval.get("batch_size") or cfg.train.batch_size)
        train_eval = DeviceLoader(
            train_x[idx], train_y[idx], SequentialBatchSampler(len(idx), eval_bs), mean, std, device=device
        )
    info = _info(dcfg.name, train_y, val_y, num_classes, mean, std)
    return DataBundle(
        train, val, num_classes, train_x.shape[1], train_x.shape[-1], info, val_batch=val_batch, train_eval=train_eval
    )


def _build_streamed(cfg, device) -> DataBundle:
    """An image folder (Imagenette, or an ImageNet subset of the user's folder) decoded by DataLoader workers."""
    from bnlab.data import imagenet_subset
    from bnlab.data import imagenette as inet

    dcfg = cfg.data
    open_split = imagenet_subset.open_subset if dcfg.name == "imagenet_subset" else inet.open_imagenette
    size, workers = int(dcfg.image_size), int(dcfg.num_workers)
    rrc, flip = bool(dcfg.random_resized_crop), bool(dcfg.flip)
    train_aug = open_split(dcfg, "train", inet.transforms(size, True, rrc, flip))
    train_plain = open_split(dcfg, "train", inet.transforms(size, False))
    test_plain = open_split(dcfg, "val", inet.transforms(size, False))
    train_y, test_y = inet.labels_of(train_plain), inet.labels_of(test_plain)
    num_classes = len(train_plain.classes)
    train_idx, val_idx, val_from_train = split_indices(train_y, test_y, dcfg, num_classes)
    val_set, val_y = (train_plain, train_y) if val_from_train else (test_plain, test_y)
    val_y, train_y = val_y[val_idx], train_y[train_idx]

    n_stats = int(dcfg.stats_images)
    mean, std = inet.channel_stats_of(train_plain, train_idx, n_stats, int(dcfg.get("split_seed", 0)), workers)
    train_sampler, val_sampler, val_batch_sampler = _samplers(cfg, train_y, val_y)
    train_ds, val_ds = Subset(train_aug, train_idx.tolist()), Subset(val_set, val_idx.tolist())
    train = WorkerLoader(train_ds, train_sampler, mean, std, seed=int(cfg.seed), device=device, num_workers=workers)
    val = WorkerLoader(val_ds, val_sampler, mean, std, device=device, num_workers=workers)
    val_batch = None
    if val_batch_sampler is not None:
        val_batch = WorkerLoader(val_ds, val_batch_sampler, mean, std, device=device, num_workers=workers)
    info = _info(dcfg.name, train_y, val_y, num_classes, mean, std, norm_stats_images=min(n_stats, len(train_idx)))
    return DataBundle(train, val, num_classes, 3, size, info, val_batch=val_batch)


def validate_data_config(cfg) -> None:
    """Data and sampler checks that need no files (called from bnlab.config.validate); the rest fail on load."""
    dcfg = cfg.data
    DATASETS.check(dcfg, shared=SHARED_KEYS)
    keys = ("image_size", "holdout", "stats_images", "n_train", "n_test", "num_classes", "channels")
    for key in (*keys, "train_per_class", "test_per_class"):
        v = dcfg.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ConfigError(f"data.{key}", f"must be a positive integer, got {v!r}")
    n = cfg.get("eval", {}).get("train_images", 0)
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
        raise ConfigError("eval.train_images", f"must be a non-negative integer (0 = off), got {n!r}")
    if dcfg.get("name") == "glyphs" and dcfg.get("holdout_style") is not None:
        from bnlab.data.glyphs import STYLES

        if dcfg.holdout_style not in STYLES:
            raise ConfigError("data.holdout_style", f"got {dcfg.holdout_style!r}", allowed=STYLES)
    workers = dcfg.get("num_workers")  # only the datasets read by worker processes have it (imagenette)
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 0):
        raise ConfigError("data.num_workers", f"must be a non-negative integer, got {workers!r}")
    imbalance = dcfg.get("imbalance")
    if imbalance is not None:
        if not hasattr(imbalance, "get") or set(imbalance) - {"classes", "keep_fraction"}:
            raise ConfigError(
                "data.imbalance", f"expected {{classes: [..], keep_fraction: f}} or null, got {imbalance}"
            )
        fraction = imbalance.get("keep_fraction")
        if not isinstance(fraction, int | float) or isinstance(fraction, bool) or not 0 < fraction <= 1:
            raise ConfigError("data.imbalance.keep_fraction", f"must be in (0, 1], got {fraction!r}")
        classes = imbalance.get("classes")
        if not classes or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes):
            raise ConfigError("data.imbalance.classes", f"need a non-empty list of labels, got {classes!r}")
    subset = dcfg.get("train_subset")
    if isinstance(subset, int) and not isinstance(subset, bool):
        _check_enough_images(cfg, subset)
    validate_sampler_config(cfg)
    validate_domains(cfg)  # domains.* (data/domains.py)


def build_data(cfg, device="cpu") -> DataBundle:
    source = DATASETS.build(cfg.data, shared=SHARED_KEYS)
    if isinstance(source, Streamed):
        return _build_streamed(cfg, device)
    return with_domains(_build_in_memory(cfg, device, source), cfg)  # + target domain when cfg.domains asks


__all__ = [
    "DATASETS",
    "DataBundle",
    "DatasetNotFoundError",
    "build_data",
    "channel_stats",
    "split_indices",
    "validate_data_config",
]
