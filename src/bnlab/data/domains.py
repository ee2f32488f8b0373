"""Domains as data: a shifted target domain made from the same images, and a domain id per sample.

Wu, "Devils in BatchNorm" (non-i.i.d. data from different sources: multi-domain learning, fine-tuning): Separate BN
trains per-domain statistics, Adaptive BN recomputes statistics on the target domain, Frozen BN fine-tunes with
constant statistics. To study them on one dataset, the target domain is the source images under a fixed,
deterministic change of the uint8 pixels (x in [0, 255]):

    target = clip(round(contrast * x + brightness + noise), 0, 255),   noise ~ N(0, noise_std^2) per pixel,

with the noise drawn once from `noise_seed` (the same target images in every run). Preprocessing (mean/std) stays
the source training set's, as it would for a deployed model. Loaders of domain data yield (x, y, domain_ids);
the training loop passes the ids on to the model (`model(x, ids)`, see bnlab.norm.separate.route_domains).
Domain 0 is the source, domain 1 the target.
"""

from __future__ import annotations

import itertools

import torch

from bnlab.config_errors import ConfigError
from bnlab.data.device_loader import DeviceLoader

SOURCE, TARGET = 0, 1
TRAIN_ON = ("source", "target", "mixed")


def shift_images(images: torch.Tensor, contrast: float, brightness: float, noise_std: float, seed: int) -> torch.Tensor:
    """The target-domain version of uint8 images (N, C, H, W): same shape and dtype, deterministic."""
    x = images.float() * contrast + brightness
    if noise_std > 0:
        gen = torch.Generator().manual_seed(seed)
        x = x + noise_std * torch.randn(images.shape, generator=gen).to(x.device)
    return x.round_().clamp_(0, 255).to(torch.uint8)


class DomainLoader(DeviceLoader):
    """A DeviceLoader whose batches carry one domain id per sample: (x, y, domain_ids)."""

    def __init__(self, images, labels, domain_ids, batch_sampler, mean, std, augment=None, seed=0, device="cpu"):
        super().__init__(images, labels, batch_sampler, [], [], augment, seed, device)
        self.mean, self.std = mean, std  # already shaped tensors on the device (taken from a DeviceLoader)
        self.domain_ids = domain_ids.to(self.device)
        self.host_domain_ids = domain_ids.cpu()  # each batch's domain counts are made on the host, once an epoch

    @classmethod
    def like(cls, loader: DeviceLoader, images, domain_ids, batch_sampler=None) -> DomainLoader:
        """Same labels, sampler, preprocessing and augmentation as `loader`, other images and their domain ids."""
        sampler = batch_sampler or loader.batch_sampler
        return cls(
            images,
            loader.labels,
            domain_ids,
            sampler,
            loader.mean,
            loader.std,
            loader.augment,
            loader.seed,
            loader.device,
        )

    def __iter__(self):
        """(x, y, ids); the ids carry their grouping for Separate BN (norm/separate.py), made without a host read:
        `domain_order` the batch's positions domain by domain (a stable sort on the device), `domain_counts` each
        domain's samples (counted on the host at the epoch's start)."""
        batches = self._batches()
        first = next(batches, None)  # plans the epoch: its sample indices on the host (epoch_indices)
        if first is None:
            return
        for (x, y, idx), counts in zip(itertools.chain([first], batches), self._domain_counts(self.epoch_sizes)):
            ids = self.domain_ids[idx]
            ids.domain_order, ids.domain_counts = torch.sort(ids, stable=True).indices, counts
            yield x, y, ids

    def _domain_counts(self, sizes: list[int]) -> list[tuple[int, ...]]:
        """Samples of each domain in each batch of the epoch, counted on the host."""
        ids = self.host_domain_ids[self.epoch_indices]
        k = int(self.host_domain_ids.max()) + 1 if len(self.host_domain_ids) else 1
        return [tuple(torch.bincount(part, minlength=k).tolist()) for part in ids.split(sizes)]

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)


def validate_domains(cfg) -> None:
    d = cfg.get("domains") or {}
    if d.get("name", "none") == "none":
        return
    if d.get("name") != "shifted":
        raise ConfigError("domains.name", f"got {d.get('name')!r}", allowed=("none", "shifted"))
    if cfg.data.get("name") not in ("fashion_mnist", "cifar10", "cifar100", "synthetic"):
        raise ConfigError("domains.name", f"domains need an in-memory dataset, not {cfg.data.get('name')!r}")
    if d.get("train_on", "source") not in TRAIN_ON:
        raise ConfigError("domains.train_on", f"got {d.get('train_on')!r}", allowed=TRAIN_ON)
    for key in ("contrast", "brightness", "noise_std", "mix_fraction"):
        if not isinstance(d.get(key), int | float) or isinstance(d.get(key), bool):
            raise ConfigError(f"domains.{key}", f"must be a number, got {d.get(key)!r}")
    if not 0 < d.mix_fraction < 1:
        raise ConfigError("domains.mix_fraction", f"must be in (0, 1), got {d.mix_fraction!r}")
    if d.noise_std < 0:
        raise ConfigError("domains.noise_std", f"must be >= 0, got {d.noise_std!r}")
    if d.get("train_on") != "source" and int(cfg.train.get("processes") or 1) > 1:
        raise ConfigError("domains.train_on", "domain ids per sample are not sharded over train.processes > 1")


def with_domains(bundle, cfg):
    """Add the target domain to a DataBundle: `target_val` (the shifted validation images, ids 1), ids on the
    source validation set (0) and training images from `domains.train_on` (source: unchanged, no ids)."""
    d = cfg.get("domains") or {}
    if d.get("name", "none") == "none":
        return bundle
    shift = lambda images: shift_images(
        images, float(d.contrast), float(d.brightness), float(d.noise_std), int(d.noise_seed)
    )
    val = bundle.val
    n_val = len(val.labels)
    bundle.val = DomainLoader.like(val, val.images, torch.full((n_val,), SOURCE))
    bundle.target_val = DomainLoader.like(val, shift(val.images.cpu()), torch.full((n_val,), TARGET))
    train, n = bundle.train, len(bundle.train.labels)
    if d.train_on == "target":
        bundle.train = DomainLoader.like(train, shift(train.images.cpu()), torch.full((n,), TARGET))
    elif d.train_on == "mixed":  # a seeded subset of the training images replaced by their target version
        gen = torch.Generator().manual_seed(int(cfg.data.get("split_seed", 0)) + 4)
        ids = (torch.rand(n, generator=gen) < float(d.mix_fraction)).long()
        shifted = shift(train.images.cpu()).to(train.device)
        images = torch.where(ids.to(train.device).view(-1, 1, 1, 1).bool(), shifted, train.images)
        bundle.train = DomainLoader.like(train, images, ids)
    ids = getattr(bundle.train, "domain_ids", None)
    bundle.info["domains"] = {"n_target_train": int((ids == TARGET).sum()) if ids is not None else 0}
    return bundle
