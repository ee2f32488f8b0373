"""Loaders and splits: batched augmentation, the device-resident loader against torch's DataLoader, the synthetic
dataset, seeded holdout / subset / imbalance, and the eval sampler wired through build_data."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from bnlab.config import validate
from bnlab.config_errors import ConfigError
from bnlab.data import build_data, channel_stats
from bnlab.data.augment import BatchAugment
from bnlab.data.device_loader import DeviceLoader
from bnlab.data.samplers import IIDBatchSampler
from bnlab.data.synthetic import make_synthetic
from bnlab.data.worker_loader import WorkerLoader
from bnlab.utils.seeding import epoch_seed
from conftest import compose_cfg


def uint8_images(n=40, c=3, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8), torch.arange(n) % 10


def test_augmentation_keeps_shape_and_dtype_and_really_crops_and_flips():
    x = torch.rand(64, 3, 12, 12)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(BatchAugment(0, False)(x, gen), x) and not BatchAugment(0, False).active
    out = BatchAugment(crop_padding=2, flip=True)(x, gen)
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = F.pad(x, (2, 2, 2, 2))
    n_flipped = 0
    for i in range(len(x)):  # every output is one shifted 12x12 window of the zero-padded image, maybe mirrored
        windows = [padded[i, :, dy : dy + 12, dx : dx + 12] for dy in range(5) for dx in range(5)]
        plain = any(torch.equal(out[i], w) for w in windows)
        mirrored = any(torch.equal(out[i], w.flip(2)) for w in windows)
        assert plain or mirrored, i
        n_flipped += mirrored and not plain
    assert 10 < n_flipped < 54  # about half are flipped
    assert not torch.equal(out, x)


@pytest.mark.parametrize("crop, flip", [(0, False), (2, True), (3, False), (0, True)])
def test_epoch_drawn_at_once_gives_the_batches_of_drawing_per_step(crop, flip):
    """Pins CPU runs bitwise: drawing an epoch's indices and augmentation before its first step (one copy to the
    device) gives exactly the batches of drawing each step's (the loader before issue 31), short last batch too."""
    images, labels = uint8_images(n=45)
    mean, std = channel_stats(images)
    sampler, augment = IIDBatchSampler(labels, 8, seed=3, drop_last=False), BatchAugment(crop, flip)
    loader = DeviceLoader(images, labels, sampler, mean, std, augment, seed=5)
    for epoch in range(2):
        loader.set_epoch(epoch)
        gen = torch.Generator().manual_seed(epoch_seed(5, epoch))
        per_step = [(loader.transform(images[torch.as_tensor(i)], gen), labels[torch.as_tensor(i)]) for i in sampler]
        batches = list(loader)
        assert len(batches) == len(per_step) == 6
        for (x, y), (x_ref, y_ref) in zip(batches, per_step):
            assert torch.equal(x, x_ref) and torch.equal(y, y_ref)


def test_device_loader_without_augmentation_is_the_normalized_images():
    images, labels = uint8_images()
    mean, std = channel_stats(images)
    loader = DeviceLoader(images, labels, IIDBatchSampler(labels, 8, seed=3), mean, std, BatchAugment(0, False))
    for x, _ in loader:
        assert x.dtype == torch.float32 and x.shape == (8, 3, 12, 12)
    normalized = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert abs(normalized.mean().item()) < 1e-5 and abs(normalized.std().item() - 1) < 0.01
    torch_loader = DataLoader(TensorDataset(normalized, labels), batch_sampler=IIDBatchSampler(labels, 8, seed=3))
    batches = list(loader)
    assert len(batches) == len(torch_loader) == 5
    for (x, y), (x_ref, y_ref) in zip(batches, torch_loader):
        assert torch.allclose(x, x_ref, atol=1e-6) and torch.equal(y, y_ref)


@pytest.mark.parametrize("workers", [0, 2])
def test_worker_loader_gives_the_device_loaders_batches(workers):
    images, labels = uint8_images()
    mean, std = channel_stats(images)
    device = DeviceLoader(images, labels, IIDBatchSampler(labels, 8, seed=5), mean, std)
    worker = WorkerLoader(
        TensorDataset(images, labels), IIDBatchSampler(labels, 8, seed=5), mean, std, num_workers=workers
    )
    for epoch in (0, 1):
        device.set_epoch(epoch)
        worker.set_epoch(epoch)
        pairs = list(zip(device, worker))
        assert len(pairs) == len(device) == len(worker) == 5
        for (x, y), (xw, yw) in pairs:
            assert torch.equal(y, yw) and torch.allclose(x, xw, atol=1e-6)
    assert worker.device == device.device == torch.device("cpu")


def test_synthetic_is_seeded_balanced_uint8_and_learnable():
    a, b = make_synthetic(200, 100, 5, 2, 8, noise=1.0, seed=1), make_synthetic(200, 100, 5, 2, 8, noise=1.0, seed=1)
    assert all(torch.equal(u, v) for u, v in zip(a[:4], b[:4]))
    assert not torch.equal(a[0], make_synthetic(200, 100, 5, 2, 8, noise=1.0, seed=2)[0])
    train_x, train_y, test_x, test_y, k = a
    assert train_x.dtype == torch.uint8 and train_x.shape == (200, 2, 8, 8) and k == 5
    assert torch.bincount(train_y).tolist() == [40] * 5
    # class structure: nearest class mean of the training set classifies test images well above chance (20%)
    means = torch.stack([train_x[train_y == c].float().mean(0) for c in range(5)])
    pred = torch.cdist(test_x.float().flatten(1), means.flatten(1)).argmin(1)
    assert (pred == test_y).float().mean() > 0.6


def test_holdout_subset_and_imbalance_are_seeded_and_disjoint():
    over = [
        "data=synthetic",
        "data.n_train=600",
        "data.val_source=holdout",
        "data.holdout=100",
        "data.train_subset=400",
        "data.imbalance={classes:[1,3],keep_fraction:0.25}",
        "train.batch_size=20",
    ]
    cfg = compose_cfg(over)
    validate(cfg)
    a, b = build_data(cfg), build_data(compose_cfg([*over, "seed=7"]))  # the split ignores the run seed
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.val.images, b.val.images)
    counts = a.info["train_class_counts"]
    before = build_data(compose_cfg([o for o in over if "imbalance" not in o])).info["train_class_counts"]
    assert sum(before) == 400 and a.info["n_val"] == 100
    expected = [round(0.25 * n) if c in (1, 3) else n for c, n in enumerate(before)]
    assert counts == expected and a.info["n_train"] == sum(expected)
    train_rows = {tuple(x.flatten().tolist()) for x in a.train.images}
    assert not any(tuple(x.flatten().tolist()) in train_rows for x in a.val.images)
    # normalization constants come from the (imbalanced) training images actually used
    assert a.info["norm_mean"] == channel_stats(a.train.images)[0]


def test_bad_data_config_names_the_key():
    with pytest.raises(ConfigError, match="data.imbalance.keep_fraction"):
        validate(compose_cfg(["data=synthetic", "data.imbalance={classes:[1],keep_fraction:0}"]))
    with pytest.raises(ConfigError, match="data.image_size"):
        build_data(compose_cfg(["data.image_size=32", "data.train_subset=100", "data.val_subset=100"]))
    with pytest.raises(ConfigError, match="data.holdout"):
        build_data(compose_cfg(["data=synthetic", "data.val_source=holdout", "data.holdout=5000"]))


def test_eval_label_pairs_sampler_through_build_data():
    cfg = compose_cfg(["data=synthetic", "train.batch_size=32", "eval.sampler.name=label_pairs", "eval.batch_size=50"])
    validate(cfg)
    data = build_data(cfg)
    assert torch.equal(torch.cat([y for _, y in data.val]), data.val.labels)  # EMA evaluation: each image once
    batches = list(data.val_batch)  # batch-statistics evaluation: label-pair batches
    assert len(batches) == -(-512 // 50) and all(len(y) == 50 for _, y in batches)
    for _, y in batches:  # 25 groups of 2 same-label images, adjacent
        assert torch.equal(y[0::2], y[1::2])


class _RandomlyFlipped(torch.utils.data.Dataset):
    """A per-image random transform drawing from torch's global RNG, as torchvision's transforms do."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = self.images[i]
        return (x.flip(-1) if torch.rand(()) < 0.5 else x) + torch.randint(0, 3, ()).to(torch.uint8), self.labels[i]


def test_worker_augmentation_is_seeded_per_image_whatever_the_workers_and_replays_on_resume():
    """Persistent workers keep their RNG across epochs; seeding each image by (seed, epoch, index) keeps the batches
    the same for 0 or 2 workers, different between epochs, and the same for a loader started at epoch 1 (a resume)."""
    images, labels = uint8_images()
    mean, std = channel_stats(images)

    def loader(workers):
        sampler = IIDBatchSampler(labels, 8, seed=5)
        return WorkerLoader(_RandomlyFlipped(images, labels), sampler, mean, std, seed=3, num_workers=workers)

    def epochs(wl, which):
        out = []
        for e in which:
            wl.set_epoch(e)
            out.append(torch.cat([x for x, _ in wl]))
        return out

    none, two = epochs(loader(0), (0, 1)), epochs(loader(2), (0, 1))
    assert torch.equal(none[0], two[0]) and torch.equal(none[1], two[1])
    assert not torch.equal(none[0], none[1])
    resumed = loader(2)
    assert resumed.loader.persistent_workers
    assert torch.equal(epochs(resumed, (1,))[0], two[1])
    state = torch.random.get_rng_state()
    epochs(loader(0), (0,))
    assert torch.equal(torch.random.get_rng_state(), state)  # 0 workers: the training process's RNG is untouched
