"""A torch DataLoader (worker processes, per-image transforms) behind the DeviceLoader interface.

For datasets too large to sit on the device (Imagenette). The training loop sees the same thing as with
DeviceLoader: an iterable of normalized (x, y) on `.device`, `len()`, `set_epoch(epoch)`; batches come from the
same batch samplers, passed to the DataLoader as `batch_sampler=`. Workers return uint8 CHW tensors; scaling to
[0, 1] and per-channel normalization run on the device exactly as in DeviceLoader, so both paths give the same
numbers for the same images.

Workers persist across epochs (starting 8 decoding processes every pass costs seconds an epoch). Each image's
random augmentation is seeded by (run seed, epoch, image index) instead of by the worker, so the augmentation is
the same whatever the number of workers, and a resumed run replays the same batches.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from bnlab.utils.seeding import epoch_seed


class _SeededImages(Dataset):
    """dataset[i] with torch's RNG seeded for that image, and restored after (with 0 workers this is the training
    process's RNG)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class _SeededBatches:
    """The batch sampler's batches as (index, seed) pairs, seeds drawn from the loader's current epoch."""

    def __init__(self, batch_sampler, loader: WorkerLoader):
        self.batch_sampler, self.loader = batch_sampler, loader

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self):
        base = epoch_seed(self.loader.seed, self.loader.epoch)
        for batch in self.batch_sampler:
            yield [(int(i), (base * 2_654_435_761 + int(i)) % 2**63) for i in batch]


class WorkerLoader:
    def __init__(self, dataset, batch_sampler, mean, std, seed: int = 0, device="cpu", num_workers: int = 0):
        self.device = torch.device(device)
        self.batch_sampler = batch_sampler
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.seed = seed
        self.epoch = 0
        self.loader = DataLoader(
            _SeededImages(dataset),
            batch_sampler=_SeededBatches(batch_sampler, self),
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=num_workers > 0,  # augmentation is seeded per image, not per worker start
            generator=torch.Generator().manual_seed(seed),  # the loader's own base seed: no draw from the global RNG
        )

    def set_epoch(self, epoch: int) -> None:
        """Seeds order and augmentation from (seed, epoch), so a resumed run replays the same batches."""
        self.epoch = epoch
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def transform(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return (x_uint8.float().div_(255) - self.mean) / self.std

    def __iter__(self):
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True)
            yield self.transform(x), y.to(self.device, non_blocking=True)
