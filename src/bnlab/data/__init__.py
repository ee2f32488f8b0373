"""`build_data(cfg, device)`: dataset -> split -> normalization constants -> samplers -> loaders."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bnlab.config_errors import ConfigError
from bnlab.data.augment import BatchAugment
from bnlab.data.device_loader import DeviceLoader
from bnlab.data.errors import DatasetNotFoundError
from bnlab.data.fashion_mnist import load_fashion_mnist
from bnlab.data.samplers import SequentialBatchSampler, build_batch_sampler

# name -> loader(cfg) returning (train_x uint8 NCHW, train_y, test_x, test_y, num_classes)
DATASETS = {
    "fashion_mnist": lambda cfg: load_fashion_mnist(cfg.get("root"), cfg.get("download", False)),
}


@dataclass
class DataBundle:
    train: DeviceLoader
    val: DeviceLoader
    num_classes: int
    in_channels: int
    image_size: int
    info: dict = field(default_factory=dict)  # sizes and normalization constants, recorded in summary.json


def _subset(x, y, n, seed):
    if n is None or n >= len(y):
        return x, y
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx], y[idx]


def channel_stats(images_uint8: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of the training images in [0, 1] (computed, not hard-coded, and recorded)."""
    x = images_uint8.float().div_(255).transpose(0, 1).reshape(images_uint8.shape[1], -1)
    return x.mean(1).tolist(), x.std(1).tolist()


def build_data(cfg, device="cpu") -> DataBundle:
    dcfg = cfg.data
    name = dcfg.get("name")
    if name not in DATASETS:
        raise ConfigError("data.name", f"unknown dataset {name!r}", allowed=sorted(DATASETS))
    train_x, train_y, test_x, test_y, num_classes = DATASETS[name](dcfg)

    split_seed = int(dcfg.get("split_seed", 0))  # fixed across runs: every arm sees the same split
    if dcfg.get("val_source", "test") == "holdout":
        n_val = int(dcfg.get("holdout", 5000))
        perm = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(split_seed))
        val_x, val_y = train_x[perm[:n_val]], train_y[perm[:n_val]]
        train_x, train_y = train_x[perm[n_val:]], train_y[perm[n_val:]]
    else:
        val_x, val_y = test_x, test_y
    train_x, train_y = _subset(train_x, train_y, dcfg.get("train_subset"), split_seed + 1)
    val_x, val_y = _subset(val_x, val_y, dcfg.get("val_subset"), split_seed + 2)

    mean, std = channel_stats(train_x)
    augment = BatchAugment(int(dcfg.get("crop_padding", 0)), bool(dcfg.get("flip", False)))
    tcfg = cfg.train
    train_sampler = build_batch_sampler(
        cfg.sampler, train_y, int(tcfg.batch_size), int(cfg.seed), tcfg.get("batches_per_epoch")
    )
    eval_bs = int(cfg.eval.get("batch_size") or tcfg.batch_size)
    train = DeviceLoader(train_x, train_y, train_sampler, mean, std, augment, seed=int(cfg.seed), device=device)
    val = DeviceLoader(val_x, val_y, SequentialBatchSampler(len(val_y), eval_bs), mean, std, device=device)
    info = {
        "dataset": name,
        "n_train": len(train_y),
        "n_val": len(val_y),
        "num_classes": num_classes,
        "norm_mean": mean,
        "norm_std": std,
    }
    return DataBundle(train, val, num_classes, train_x.shape[1], train_x.shape[-1], info)


__all__ = ["DATASETS", "DataBundle", "DatasetNotFoundError", "build_data", "channel_stats"]
