"""i.i.d. batches: a fresh permutation every epoch (seeded by seed and epoch)."""

from __future__ import annotations

import torch

from bnlab.utils.seeding import epoch_seed


class IIDBatchSampler:
    def __init__(
        self,
        labels,
        batch_size: int,
        seed: int = 0,
        drop_last: bool = True,
        batches_per_epoch: int | None = None,
    ):
        self.n = len(labels)
        self.batch_size, self.seed, self.drop_last = batch_size, seed, drop_last
        self.batches_per_epoch = batches_per_epoch  # an "epoch" of N batches (the forum's: 250 x 40)
        self.epoch = 0
        if self.n < batch_size and drop_last:
            raise ValueError(f"batch size {batch_size} exceeds the {self.n} training samples")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.batches_per_epoch:
            return self.batches_per_epoch
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self):
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        emitted, order, pos = 0, torch.randperm(self.n, generator=gen), 0
        while emitted < len(self):
            if pos + self.batch_size > self.n and (self.drop_last or self.batches_per_epoch):
                order, pos = torch.randperm(self.n, generator=gen), 0  # next pass over the data
            batch = order[pos : pos + self.batch_size]
            pos += self.batch_size
            emitted += 1
            yield batch.tolist()


class SequentialBatchSampler:
    """Evaluation order: every sample once, in order; the last batch may be smaller."""

    def __init__(self, n: int, batch_size: int):
        self.n, self.batch_size = n, batch_size

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self):
        for start in range(0, self.n, self.batch_size):
            yield list(range(start, min(start + self.batch_size, self.n)))
