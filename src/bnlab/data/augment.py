"""Batched augmentation on the training device (cifar10-fast / airbench style): no PIL, no workers.

The random draws (crop offsets, flips) come from a CPU generator, so a seed gives the same augmentation on every
device; `BatchAugment.draw` makes them for a batch and `apply` uses them, so a loader can draw a whole epoch's
on the host and copy them to the device once (data/device_loader.py) instead of once per step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DRAWS = ("dy", "dx", "flip")  # what `draw` returns, per sample, in this order


def crop_at(x: torch.Tensor, padding: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Pad by `padding` (zeros, like torchvision's RandomCrop(padding=...)) and crop back at offsets (dy, dx),
    one per sample, tensors on x's device."""
    n, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    # one gather: row/col index grids shifted per sample
    rows = torch.arange(h, device=x.device)[None, :] + dy[:, None]  # (n, h)
    cols = torch.arange(w, device=x.device)[None, :] + dx[:, None]  # (n, w)
    idx_n = torch.arange(n, device=x.device)[:, None, None, None]
    idx_c = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]


def flip_where(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """`crop_at` random offsets in [0, 2 * padding] drawn from `generator` (a CPU generator)."""
    if padding <= 0:
        return x
    dy = torch.randint(0, 2 * padding + 1, (x.shape[0],), generator=generator, device="cpu").to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (x.shape[0],), generator=generator, device="cpu").to(x.device)
    return crop_at(x, padding, dy, dx)


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=generator, device="cpu").to(x.device) < 0.5
    return flip_where(x, flip)


class BatchAugment:
    """Crop-with-padding and horizontal flip applied to a whole batch at once."""

    def __init__(self, crop_padding: int = 0, flip: bool = False):
        self.crop_padding, self.flip = crop_padding, flip

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.flip

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(3, n) int64 on the CPU: rows dy, dx, flip (0/1) for a batch of n, drawn in the order `__call__`
        draws them (so both give the same augmentation); rows of an inactive transform are 0."""
        out = torch.zeros(len(DRAWS), n, dtype=torch.long)
        if self.crop_padding > 0:
            out[0] = torch.randint(0, 2 * self.crop_padding + 1, (n,), generator=generator)
            out[1] = torch.randint(0, 2 * self.crop_padding + 1, (n,), generator=generator)
        if self.flip:
            out[2] = torch.rand(n, generator=generator) < 0.5
        return out

    def apply(self, x: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """The augmentation `draws` (from `draw`, on x's device) describe: no host sync, no copy."""
        if self.crop_padding > 0:
            x = crop_at(x, self.crop_padding, draws[0], draws[1])
        return flip_where(x, draws[2].bool()) if self.flip else x

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = random_crop(x, self.crop_padding, generator)
        return random_flip(x, generator) if self.flip else x
