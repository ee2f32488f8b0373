"""The whole (small) dataset sits on the training device as uint8; a batch is one gather + batched augment.

On CPU this is also the fast path: no worker processes, no per-image PIL decoding. Iteration order comes
from a batch sampler (lists of indices), so any sampler composes with any dataset.

A step never waits for the host: at the start of an epoch the sampler's batches and the augmentation's random
draws (CPU generators, so a seed means the same batches on every device) are made at once, in the order a step
would make them, and copied to the device in one non-blocking copy from pinned memory; each step then slices
that copy, gathers and augments on the device. The CPU computes exactly what drawing per step did.
"""

from __future__ import annotations

import torch

from bnlab.utils.seeding import epoch_seed


class DeviceLoader:
    def __init__(self, images, labels, batch_sampler, mean, std, augment=None, seed: int = 0, device="cpu"):
        self.device = torch.device(device)
        self.images = images.to(self.device)  # uint8 (N, C, H, W)
        self.labels = labels.to(self.device)
        self.batch_sampler = batch_sampler
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Seeds order and augmentation from (seed, epoch), so a resumed run replays the same batches."""
        self.epoch = epoch
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def transform(self, x_uint8: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = x_uint8.float().div_(255)
        if self.augment is not None and self.augment.active and generator is not None:
            x = self.augment(x, generator)
        return (x - self.mean) / self.std

    def _generator(self) -> torch.Generator:
        """The augmentation's CPU generator for this epoch."""
        return torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))

    def _epoch_on_device(self) -> tuple[torch.Tensor, list[int]]:
        """(rows, n, ...) int64 on the device: the epoch's sample indices, then each augmentation draw's row
        (data/augment.py), batch after batch; and each batch's size."""
        gen, augmenting = self._generator(), self.augment is not None and self.augment.active
        parts, sizes = [], []
        for indices in self.batch_sampler:
            idx = torch.as_tensor(indices, dtype=torch.long).view(1, -1)
            parts.append(torch.cat([idx, self.augment.draw(idx.shape[1], gen)]) if augmenting else idx)
            sizes.append(idx.shape[1])
        host = torch.cat(parts, 1) if parts else torch.empty(1, 0, dtype=torch.long)
        self.epoch_indices, self.epoch_sizes = host[0], sizes  # the epoch's batches on the host (DomainLoader's)
        if self.device.type == "cuda":  # pinned: the copy runs asynchronously, the host queues steps meanwhile
            return host.pin_memory().to(self.device, non_blocking=True), sizes
        return host.to(self.device), sizes

    def _batches(self):
        """(x, y, sample indices) per batch, on the device, without a host sync."""
        plan, sizes = self._epoch_on_device()
        start = 0
        for size in sizes:
            cols = plan[:, start : start + size]
            start += size
            idx = cols[0]
            x = self.images[idx].float().div_(255)
            if plan.shape[0] > 1:
                x = self.augment.apply(x, cols[1:])
            yield (x - self.mean) / self.std, self.labels[idx], idx

    def __iter__(self):
        for x, y, _ in self._batches():
            yield x, y
