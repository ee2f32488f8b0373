"""The whole (small) dataset sits on the training device as uint8; a batch is one gather + batched augment.

On CPU this is also the fast path: no worker processes, no per-image PIL decoding. Iteration order comes
from a batch sampler (lists of indices), so any sampler composes with any dataset.
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

    def __iter__(self):
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        for indices in self.batch_sampler:
            idx = torch.as_tensor(indices, dtype=torch.long, device=self.device)
            yield self.transform(self.images[idx], gen), self.labels[idx]
