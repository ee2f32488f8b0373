"""Seeded synthetic images with learnable class structure, for tests and quick checks without files.

Each class has a smooth random mean pattern (a coarse Gaussian field upsampled to the image size); an image is
its class pattern plus i.i.d. pixel noise, stored as uint8 like the real datasets so the same loaders,
augmentation and normalization apply. `noise` sets the difficulty: at 1.0 the noise std equals the pattern std.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _images(patterns, labels, noise, gen):
    x = patterns[labels] + noise * torch.randn((len(labels), *patterns.shape[1:]), generator=gen)
    return (128 + 40 * x).round_().clamp_(0, 255).to(torch.uint8)  # +-3 std of the pattern fits in [8, 248]


def make_synthetic(
    n_train: int = 2048,
    n_test: int = 512,
    num_classes: int = 10,
    channels: int = 3,
    image_size: int = 16,
    noise: float = 1.0,
    seed: int = 0,
):
    """Return (train_x, train_y, test_x, test_y, num_classes); classes are balanced, order shuffled."""
    gen = torch.Generator().manual_seed(seed)
    coarse = max(2, image_size // 4)
    patterns = F.interpolate(
        torch.randn((num_classes, channels, coarse, coarse), generator=gen),
        size=(image_size, image_size),
        mode="bilinear",
        align_corners=False,
    )
    patterns = (patterns - patterns.mean()) / patterns.std()
    out = []
    for n in (n_train, n_test):
        labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
        out += [_images(patterns, labels, noise, gen), labels]
    return (*out, num_classes)
