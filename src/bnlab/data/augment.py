"""Batched augmentation on the training device (cifar10-fast / airbench style): no PIL, no workers."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Pad by `padding` (zeros, like torchvision's RandomCrop(padding=...)) and crop back at random offsets."""
    if padding <= 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device="cpu").to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device="cpu").to(x.device)
    # one gather: row/col index grids shifted per sample
    rows = torch.arange(h, device=x.device)[None, :] + dy[:, None]  # (n, h)
    cols = torch.arange(w, device=x.device)[None, :] + dx[:, None]  # (n, w)
    idx_n = torch.arange(n, device=x.device)[:, None, None, None]
    idx_c = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=generator, device="cpu").to(x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


class BatchAugment:
    """Crop-with-padding and horizontal flip applied to a whole batch at once."""

    def __init__(self, crop_padding: int = 0, flip: bool = False):
        self.crop_padding, self.flip = crop_padding, flip

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.flip

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = random_crop(x, self.crop_padding, generator)
        return random_flip(x, generator) if self.flip else x
