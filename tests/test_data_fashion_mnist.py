"""The Fashion-MNIST cache: keyed by data.root and by the files' content, never by modification times alone."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest

from bnlab.data.fashion_mnist import load_fashion_mnist


def _write_idx(path, array: np.ndarray, compress: bool) -> None:
    """The idx format: 0, 0, dtype code (0x08 = ubyte), number of dims, big-endian int32 sizes, then the bytes."""
    data = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def _write_root(root, seed: int, compress: bool, n_train: int = 12, n_test: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    root.mkdir(parents=True, exist_ok=True)
    for stem, a in arrays.items():
        _write_idx(root / stem, a, compress)
    return arrays


def _check(loaded, arrays) -> None:
    train_x, train_y, test_x, test_y, classes = loaded
    assert classes == 10
    np.testing.assert_array_equal(train_x[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(train_y.numpy(), arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(test_x[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(test_y.numpy(), arrays["t10k-labels-idx1-ubyte"])


@pytest.mark.parametrize("compress", [True, False])
def test_two_roots_with_different_files_get_their_own_data(tmp_path, monkeypatch, compress):
    monkeypatch.setenv("BNLAB_CACHE", str(tmp_path / "cache"))
    a = _write_root(tmp_path / "a", seed=0, compress=compress)
    b = _write_root(tmp_path / "b", seed=1, compress=compress)  # written before a's cache: older than it
    _check(load_fashion_mnist(str(tmp_path / "a")), a)
    _check(load_fashion_mnist(str(tmp_path / "b")), b)
    _check(load_fashion_mnist(str(tmp_path / "a")), a)  # both stay cached side by side


def test_a_root_whose_files_change_with_an_old_mtime_is_read_again(tmp_path, monkeypatch):
    monkeypatch.setenv("BNLAB_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "root"
    old = _write_root(root, seed=0, compress=True)
    _check(load_fashion_mnist(str(root)), old)
    new = _write_root(root, seed=2, compress=True)  # new bytes, modification times set in the past
    for f in root.iterdir():
        os.utime(f, (0, 0))
    _check(load_fashion_mnist(str(root)), new)
