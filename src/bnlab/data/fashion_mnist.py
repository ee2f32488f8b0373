"""Fashion-MNIST (Xiao et al. 2017) from local idx files: the offline default dataset.

Debian's `dataset-fashion-mnist` installs the four idx .gz files in /usr/share/datasets/fashion-mnist.
They are decompressed once into the cache in torchvision's layout and read by torchvision's FashionMNIST.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import torch

from bnlab.data.errors import DatasetNotFoundError

FILES = {
    "train-images-idx3-ubyte": "training images",
    "train-labels-idx1-ubyte": "training labels",
    "t10k-images-idx3-ubyte": "test images",
    "t10k-labels-idx1-ubyte": "test labels",
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
HOW_TO_FIX = (
    "install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; `make data` does this as root), "
    "or set data.root to a folder holding the four idx files (.gz or uncompressed), "
    "or set data.download=true on a machine with internet"
)


def cache_dir() -> Path:
    return Path(os.environ.get("BNLAB_CACHE", Path.home() / ".cache" / "bnlab"))


def _find(root: Path, stem: str) -> Path | None:
    for candidate in (root / stem, root / f"{stem}.gz", root / "FashionMNIST" / "raw" / stem):
        if candidate.is_file():
            return candidate
    return None


def _prepare_torchvision_root(root: Path) -> Path:
    """Return a folder whose FashionMNIST/raw/ holds the uncompressed idx files torchvision reads."""
    found = {stem: _find(root, stem) for stem in FILES}
    missing = [f"{stem}(.gz)" for stem, path in found.items() if path is None]
    if missing:
        raise DatasetNotFoundError(
            f"Fashion-MNIST not found under data.root={str(root)!r}: missing {', '.join(missing)}. {HOW_TO_FIX}."
        )
    if all(p.parent == root / "FashionMNIST" / "raw" for p in found.values()):
        return root
    target = cache_dir() / "fashion_mnist" / "FashionMNIST" / "raw"
    target.mkdir(parents=True, exist_ok=True)
    for stem, src in found.items():
        dst = target / stem
        if dst.is_file() and dst.stat().st_mtime >= src.stat().st_mtime:
            continue
        tmp = dst.with_suffix(".tmp")
        opener = gzip.open if src.suffix == ".gz" else open
        try:
            with opener(src, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        except (OSError, EOFError) as e:
            tmp.unlink(missing_ok=True)
            raise DatasetNotFoundError(f"cannot read {src} ({e}); the file looks corrupt. {HOW_TO_FIX}.") from e
        os.replace(tmp, dst)
    return target.parents[1]


def load_fashion_mnist(root: str | None, download: bool = False):
    """Return (train_x, train_y, test_x, test_y, num_classes) with uint8 images of shape (N, 1, 28, 28)."""
    from torchvision.datasets import FashionMNIST

    root_path = Path(root) if root else DEBIAN_DIR
    if download:
        tv_root = cache_dir() / "fashion_mnist"
        sets = [FashionMNIST(tv_root, train=t, download=True) for t in (True, False)]
    else:
        tv_root = _prepare_torchvision_root(root_path)
        try:
            sets = [FashionMNIST(tv_root, train=t, download=False) for t in (True, False)]
        except (RuntimeError, AssertionError, ValueError) as e:
            msg = f"Fashion-MNIST files under {root_path} could not be read ({e}). {HOW_TO_FIX}."
            raise DatasetNotFoundError(msg) from e
    (train, test) = sets
    out = []
    for ds in (train, test):
        out += [ds.data.unsqueeze(1).contiguous(), ds.targets.to(torch.int64)]
    return (*out, 10)
