"""Imagenette (fast.ai's 10-class ImageNet subset) through torchvision's `Imagenette` dataset class.

Too large to keep on the device, so images are decoded by DataLoader workers with torchvision transforms:
train = RandomResizedCrop(image_size) + horizontal flip, eval = resize to image_size / 0.875 + center crop (the
usual ImageNet evaluation ratio). Layout under data.root, as torchvision expects it:
`imagenette2-160/{train,val}/<wnid>/*.JPEG` (variant 160px; `imagenette2-320/` for 320px, `imagenette2/` for full).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from bnlab.data.errors import DatasetNotFoundError

ARCHIVE_FOLDERS = {"full": "imagenette2", "320px": "imagenette2-320", "160px": "imagenette2-160"}


def default_root() -> Path:
    from bnlab.data.fashion_mnist import cache_dir

    return cache_dir() / "imagenette"


def transforms(image_size: int, train: bool, random_resized_crop: bool = True, flip: bool = True):
    from torchvision import transforms as T

    if train and random_resized_crop:
        steps = [T.RandomResizedCrop(image_size)]
    else:
        steps = [T.Resize(round(image_size / 0.875)), T.CenterCrop(image_size)]
    if train and flip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose([*steps, T.PILToTensor()])  # uint8 CHW; scaling + normalization happen on the device


def open_imagenette(dcfg, split: str, transform=None):
    from torchvision.datasets import Imagenette

    variant = dcfg.get("variant", "160px")
    root = Path(dcfg.get("root") or default_root()).expanduser()
    folder = root / ARCHIVE_FOLDERS.get(variant, str(variant)) / split
    try:
        return Imagenette(
            str(root), split=split, size=variant, download=bool(dcfg.get("download")), transform=transform
        )
    except (RuntimeError, FileNotFoundError, KeyError) as e:
        raise DatasetNotFoundError(
            f"Imagenette ({variant}) not found or incomplete at {folder} ({type(e).__name__}: {e}). Set data.root to "
            f"the folder containing {ARCHIVE_FOLDERS.get(variant, variant)}/ (one sub-folder per WordNet id with "
            f".JPEG images under train/ and val/), or data.download=true on a machine with internet."
        ) from e


def labels_of(dataset) -> torch.Tensor:
    """Labels from the file list torchvision builds (no image is decoded)."""
    samples = dataset._samples if hasattr(dataset, "_samples") else dataset.samples  # Imagenette | ImageFolder
    return torch.as_tensor([label for _, label in samples], dtype=torch.long)


def channel_stats_of(dataset, indices, n_images: int, seed: int, num_workers: int) -> tuple[list[float], list[float]]:
    """Per-channel mean/std in [0, 1] over a seeded sample of `n_images` training images (eval transform)."""
    pick = torch.randperm(len(indices), generator=torch.Generator().manual_seed(seed))[:n_images]
    loader = DataLoader(Subset(dataset, [int(indices[i]) for i in pick]), batch_size=64, num_workers=num_workers)
    total = total_sq = None
    count = 0
    for x, _ in loader:
        x = x.double().div_(255).transpose(0, 1).reshape(x.shape[1], -1)
        s, sq = x.sum(1), (x * x).sum(1)
        total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
        count += x.shape[1]
    mean = total / count
    std = (total_sq / count - mean**2).clamp(min=0).sqrt() * (count / max(count - 1, 1)) ** 0.5
    return mean.tolist(), std.tolist()
