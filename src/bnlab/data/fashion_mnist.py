"""Fashion-MNIST (Xiao et al. 2017) from local idx files: the offline default dataset.

Debian's `dataset-fashion-mnist` installs the four idx .gz files in /usr/share/datasets/fashion-mnist.
They are decompressed once into the cache in torchvision's layout and read by torchvision's FashionMNIST.
The cache folder is keyed by the resolved data.root and by the files' sizes and SHA-256 digests (about 20 ms for
the 30 MB of .gz files), so two roots, or one root whose files change, never share a decompressed copy.
"""

from __future__ import annotations

import gzip
import hashlib
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


def cache_key(root: Path, found: dict[str, Path]) -> str:
    """Digest of the resolved root and of each source file's name, size and bytes: the cache folder's name."""
    h = hashlib.sha256(str(root.resolve()).encode())
    for stem in sorted(found):
        src = found[stem]
        with open(src, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        h.update(f"\0{stem}\0{src.name}\0{src.stat().st_size}\0{digest}".encode())
    return h.hexdigest()[:16]


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
    try:
        key = cache_key(root, found)
    except OSError as e:
        raise DatasetNotFoundError(f"cannot read the Fashion-MNIST files under {root} ({e}). {HOW_TO_FIX}.") from e
    target = cache_dir() / "fashion_mnist" / "by_source" / key / "FashionMNIST" / "raw"
    target.mkdir(parents=True, exist_ok=True)
    for stem, src in found.items():
        dst = target / stem
        if dst.is_file():  # the key covers this source's bytes, and files appear only complete (os.replace)
            continue
        tmp = dst.with_name(f"{stem}.{os.getpid()}.tmp")  # concurrent runs never write the same temporary file
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
