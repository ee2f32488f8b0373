"""CIFAR-10/100 through torchvision's real readers, on tiny archives written here in the official pickle format."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from bnlab.data import build_data
from bnlab.data.cifar import load_cifar
from bnlab.data.errors import DatasetNotFoundError
from conftest import compose_cfg


def _images(n: int, seed: int) -> np.ndarray:
    """(n, 3072) uint8 rows: 1024 red, then 1024 green, then 1024 blue values, each plane row-major (the format)."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _dump(path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_cifar10(root, per_batch: int = 20, n_test: int = 30) -> dict:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {"train": [], "test": None}
    for b in range(1, 6):
        data, labels = _images(per_batch, b), [(i + b) % 10 for i in range(per_batch)]
        _dump(
            folder / f"data_batch_{b}",
            {
                "batch_label": f"training batch {b} of 5",
                "labels": labels,
                "data": data,
                "filenames": [f"img_{b}_{i}.png" for i in range(per_batch)],
            },
        )
        written["train"].append((data, labels))
    data, labels = _images(n_test, 99), [i % 10 for i in range(n_test)]
    _dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": labels, "data": data})
    written["test"] = (data, labels)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump(folder / "batches.meta", {"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072})
    return written


def write_cifar100(root, n_train: int = 200, n_test: int = 100) -> dict:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    written = {}
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        data, fine = _images(n, seed), [i % 100 for i in range(n)]
        _dump(folder / split, {"data": data, "fine_labels": fine, "coarse_labels": [f // 5 for f in fine]})
        written[split] = (data, fine)
    _dump(
        folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": list("abcdefghij")}
    )
    return written


def test_cifar10_reader_decodes_the_pickle_batches(tmp_path):
    written = write_cifar10(tmp_path)
    train_x, train_y, test_x, test_y, num_classes = load_cifar(10, str(tmp_path), verify_checksums=False)
    assert num_classes == 10 and train_x.shape == (100, 3, 32, 32) and test_x.shape == (30, 3, 32, 32)
    assert train_x.dtype == torch.uint8 and train_y.dtype == torch.int64
    data, labels = written["train"][2]  # data_batch_3 holds training images 40..59, in order
    row = 40 + 7
    assert train_y[row] == labels[7]
    # red plane first, each plane row-major: pixel (c, y, x) is column c*1024 + y*32 + x
    assert train_x[row, 2, 5, 9] == data[7, 2 * 1024 + 5 * 32 + 9]
    assert torch.equal(train_x[row].reshape(-1), torch.from_numpy(data[7]))
    assert torch.equal(test_y, torch.tensor(written["test"][1]))


def test_cifar100_reader_uses_fine_labels(tmp_path):
    written = write_cifar100(tmp_path)
    train_x, train_y, test_x, test_y, num_classes = load_cifar(100, str(tmp_path), verify_checksums=False)
    assert num_classes == 100 and train_x.shape == (200, 3, 32, 32) and len(test_y) == 100
    assert train_y.tolist() == written["train"][1] and int(train_y.max()) == 99
    assert torch.equal(test_x[3].reshape(-1), torch.from_numpy(written["test"][0][3]))


def test_official_checksums_reject_a_repacked_archive(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"corrupted.*verify_checksums=false"):
        load_cifar(10, str(tmp_path), verify_checksums=True)


def test_missing_cifar_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_cifar(100, str(tmp_path / "nowhere"))
    msg = str(err.value)
    assert str(tmp_path / "nowhere" / "cifar-100-python") in msg and "data.root" in msg and "data.download=true" in msg


def test_build_data_on_tiny_cifar10_with_holdout_and_augmentation(tmp_path):
    write_cifar10(tmp_path)
    cfg = compose_cfg(
        [
            "data=cifar10",
            f"data.root={tmp_path}",
            "data.verify_checksums=false",
            "data.val_source=holdout",
            "data.holdout=20",
            "train.batch_size=16",
        ]
    )
    data = build_data(cfg)
    assert data.info["n_train"] == 80 and data.info["n_val"] == 20
    assert (data.num_classes, data.in_channels, data.image_size) == (10, 3, 32)
    assert data.train.augment.crop_padding == 4 and data.train.augment.flip  # the CIFAR default augmentation
    # normalization constants are computed from the training images, not copied from the literature
    expected = data.train.images.float().div(255).mean(dim=(0, 2, 3))
    assert np.allclose(data.info["norm_mean"], expected.tolist(), atol=1e-5)
    data.train.set_epoch(0)
    x, y = next(iter(data.train))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (16,)
