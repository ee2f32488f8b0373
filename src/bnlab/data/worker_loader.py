"""A torch DataLoader (worker processes, per-image transforms) behind the DeviceLoader interface.

For datasets too large to sit on the device (Imagenette). The training loop sees the same thing as with
DeviceLoader: an iterable of normalized (x, y) on `.device`, `len()`, `set_epoch(epoch)`; batches come from the
same batch samplers, passed to the DataLoader as `batch_sampler=`. Workers return uint8 CHW tensors; scaling to
[0, 1] and per-channel normalization run on the device exactly as in DeviceLoader, so both paths give the same
numbers for the same images.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from bnlab.utils.seeding import epoch_seed


class WorkerLoader:
    def __init__(self, dataset, batch_sampler, mean, std, seed: int = 0, device="cpu", num_workers: int = 0):
        self.device = torch.device(device)
        self.batch_sampler = batch_sampler
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.seed = seed
        self.epoch = 0
        self.loader = DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,  # workers are re-seeded from (seed, epoch) at every epoch
        )

    def set_epoch(self, epoch: int) -> None:
        """Seeds order and the workers' augmentation from (seed, epoch), so a resumed run replays the same batches."""
        self.epoch = epoch
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def transform(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return (x_uint8.float().div_(255) - self.mean) / self.std

    def __iter__(self):
        # each worker seeds torch from this generator (base seed + worker id); with 0 workers the transforms
        # draw from this process's global RNG instead: reproducible per run, but not replayed on resume
        self.loader.generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True)
            yield self.transform(x), y.to(self.device, non_blocking=True)
