"""CIFAR-10 / CIFAR-100 (Krizhevsky 2009) through torchvision's readers of the python pickle batches.

Layout under data.root: `cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}` or
`cifar-100-python/{train, test, meta}`, i.e. the official tarballs extracted. torchvision refuses files whose md5
differs from the official release; `verify_checksums: false` keeps its reader but checks only that the files
exist, for re-packed or hand-made archives in the same format (the tests write such a tiny one).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from bnlab.data.errors import DatasetNotFoundError


def default_root() -> Path:
    from bnlab.data.fashion_mnist import cache_dir

    return cache_dir() / "cifar"


def _unverified(reader_cls):
    """torchvision's reader with the md5 gate replaced by an existence check (format parsing unchanged)."""

    class Unverified(reader_cls):
        def _check_integrity(self) -> bool:
            files = [name for name, _ in self.train_list + self.test_list] + [self.meta["filename"]]
            return all(os.path.isfile(os.path.join(self.root, self.base_folder, f)) for f in files)

        def _load_meta(self) -> None:
            with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return Unverified


def load_cifar(num_classes: int, root: str | None, download: bool = False, verify_checksums: bool = True):
    """Return (train_x, train_y, test_x, test_y, num_classes) with uint8 images of shape (N, 3, 32, 32)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    reader = {10: CIFAR10, 100: CIFAR100}[num_classes]
    if not verify_checksums:
        reader = _unverified(reader)
    root_path = Path(root).expanduser() if root else default_root()
    folder = root_path / reader.base_folder
    how_to_fix = (
        f"Set data.root to the folder that contains {reader.base_folder}/ (the extracted {reader.filename}), "
        f"or data.download=true on a machine with internet (it downloads into data.root={str(root_path)!r})"
    )
    try:
        sets = [reader(str(root_path), train=t, download=download) for t in (True, False)]
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        state = "corrupted (md5 differs from the official release)" if folder.is_dir() else "missing"
        hint = "; data.verify_checksums=false accepts re-packed files" if folder.is_dir() else ""
        raise DatasetNotFoundError(f"CIFAR-{num_classes} at {folder} is {state} ({e}). {how_to_fix}{hint}.") from e
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, ValueError) as e:
        raise DatasetNotFoundError(
            f"CIFAR-{num_classes} files under {folder} could not be read ({e}). {how_to_fix}."
        ) from e
    out = []
    for ds in sets:  # torchvision keeps HWC uint8 numpy arrays and a list of ints
        out += [torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(ds.targets)]
    return (*out, num_classes)
