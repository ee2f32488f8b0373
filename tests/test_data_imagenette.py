"""Imagenette through torchvision's `Imagenette` class on a tiny folder of JPEGs written here in its layout
(`imagenette2-160/{train,val}/<wnid>/*.JPEG`), decoded by DataLoader workers behind the training-loop interface."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from bnlab.data import build_data
from bnlab.data.errors import DatasetNotFoundError
from bnlab.data.imagenette import transforms
from bnlab.data.worker_loader import WorkerLoader
from bnlab.runner import run
from conftest import compose_cfg, run_entry_point

WNIDS = ["n01440764", "n02102040", "n03000684"]  # tench, English springer, chain saw


def write_imagenette(root, n_train=8, n_val=4, wnids=WNIDS, top="imagenette2-160"):
    """Class c's images are a noisy solid colour whose brightest channel is c % 3, so labels can be checked.
    `top` is the folder under root holding train/ and val/ ("" for an ImageNet folder)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for c, wnid in enumerate(wnids):
            folder = root / top / split / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                h, w = rng.integers(30, 48, size=2)  # shorter side varies, as in the real 160px archive
                colour = np.full(3, 40)
                colour[c % 3] = 210
                pixels = np.clip(colour + rng.normal(0, 10, size=(h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{wnid}_{i}.JPEG", quality=95)


def tiny(root, *extra):
    return compose_cfg(
        [
            "data=imagenette",
            f"data.root={root}",
            "data.image_size=24",
            "data.num_workers=0",
            "data.stats_images=100",
            "train.batch_size=6",
            *extra,
        ]
    )


def raw(x, loader):
    """Undo the device-side normalization: back to [0, 1] pixels."""
    return x * loader.std + loader.mean


def test_imagenette_batches_images_and_labels(tmp_path):
    write_imagenette(tmp_path)
    data = build_data(tiny(tmp_path))
    assert isinstance(data.train, WorkerLoader) and isinstance(data.val, WorkerLoader)
    assert (data.num_classes, data.in_channels, data.image_size) == (3, 3, 24)
    assert data.info["n_train"] == 24 and data.info["n_val"] == 12 and data.info["train_class_counts"] == [8, 8, 8]
    assert len(data.info["norm_mean"]) == 3 and all(0.1 < s < 0.6 for s in data.info["norm_std"])
    data.train.set_epoch(0)
    batches = list(data.train)
    assert len(batches) == len(data.train) == 4
    for x, y in batches:
        assert x.shape == (6, 3, 24, 24) and x.dtype == torch.float32 and y.dtype == torch.int64
        pixels = raw(x, data.train)
        assert torch.equal(pixels.mean(dim=(2, 3)).argmax(1), y), "an image came with another image's label"
    val_x, val_y = next(iter(data.val))
    assert torch.equal(raw(val_x, data.val).mean(dim=(2, 3)).argmax(1), val_y)


def test_eval_transform_is_resize_and_center_crop_then_normalize(tmp_path):
    write_imagenette(tmp_path)
    data = build_data(tiny(tmp_path, "data.val_subset=null"))
    files = sorted((tmp_path / "imagenette2-160" / "val").rglob("*.JPEG"))  # torchvision's order: by class, name
    x, _ = next(iter(data.val))
    with Image.open(files[0]) as img:
        expected = transforms(24, train=False)(img.convert("RGB")).float() / 255
    assert torch.allclose(raw(x[0:1], data.val)[0], expected, atol=1e-5)


def test_imagenette_accepts_any_batch_sampler_and_holdout(tmp_path):
    write_imagenette(tmp_path)
    over = [
        "sampler=label_pairs",
        "sampler.labels_per_batch=3",
        "sampler.images_per_label=2",
        "sampler.distinct_labels=true",
        "data.val_source=holdout",
        "data.holdout=6",
    ]
    data = build_data(tiny(tmp_path, *over))
    assert data.info["n_train"] == 18 and data.info["n_val"] == 6
    for _, y in data.train:
        assert sorted(y.tolist()) == [0, 0, 1, 1, 2, 2]


def test_missing_imagenette_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        build_data(tiny(tmp_path / "empty"))
    msg = str(err.value)
    assert str(tmp_path / "empty" / "imagenette2-160") in msg and "data.root" in msg and "data.download=true" in msg


def test_training_loop_runs_on_imagenette(tmp_path):
    write_imagenette(tmp_path / "data")
    cfg = compose_cfg(
        [
            "data=imagenette",
            f"data.root={tmp_path / 'data'}",
            "data.image_size=24",
            "data.num_workers=2",
            "data.stats_images=50",
            "model=convnet8",
            "model.width=0.125",
            "train.batch_size=6",
            "train.epochs=1",
            "train.progress=false",
            "device=cpu",
            "logger=none",
        ],
        tmp_path,
    )
    summary = run(cfg)
    assert summary["status"] == "completed"
    assert all(math.isfinite(summary["final"][k]) for k in ("train_loss", "val_loss_running", "val_loss_batch"))


TRAIN_ARGS = ["data.image_size=24", "data.num_workers=0", "data.stats_images=20", "model=resnet20", "model.width=0.25",
              "train.batch_size=6", "train.epochs=1", "train.batches_per_epoch=2", "train.progress=false",
              "device=cpu", "logger=none", "eval.modes=[running]", "health.enabled=false"]  # fmt: skip


def test_data_imagenette_from_the_command_line_trains(tmp_path):
    """As a user runs it: a fresh interpreter, `data=imagenette` on the command line (nothing imported first)."""
    write_imagenette(tmp_path / "data")
    done = run_entry_point(["data=imagenette", f"data.root={tmp_path / 'data'}", f"out_dir={tmp_path / 'runs'}",
                            *TRAIN_ARGS], tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (summary,) = (tmp_path / "runs").glob("*/*/summary.json")
    assert '"status": "completed"' in summary.read_text() and '"dataset": "imagenette"' in summary.read_text()


def test_missing_imagenette_folder_is_one_line_exit_2(tmp_path):
    done = run_entry_point(["data=imagenette", f"data.root={tmp_path / 'nowhere'}", f"out_dir={tmp_path / 'runs'}",
                            *TRAIN_ARGS], tmp_path)  # fmt: skip
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: Imagenette") and "nowhere" in lines[0], done.stderr
    assert "Traceback" not in done.stderr and not list((tmp_path / "runs").glob("*/*/summary.json"))


def test_an_imagenet_folder_the_user_has_gives_the_listed_classes(tmp_path):
    """data=imagenet100 on an ImageNet-layout folder (train/<wnid>/, val/<wnid>/) holding more classes than the
    list: only the listed ones are read, in the list's sorted order."""
    from bnlab.data.imagenet_subset import class_list

    listed = class_list("imagenet100")
    assert len(listed) == len(set(listed)) == 100
    extra = ["n09999999"]  # a class of the folder not in the list
    (tmp_path / "list.txt").write_text("# three of them\n" + "\n".join(listed[:3]) + "\n")
    write_imagenette(tmp_path / "imagenet", n_train=4, n_val=2, wnids=sorted(listed[:3]) + extra, top="")
    cfg = compose_cfg(
        ["data=imagenet100", f"data.root={tmp_path / 'imagenet'}", f"data.classes={tmp_path / 'list.txt'}"]
        + ["data.image_size=24", "data.num_workers=0", "data.stats_images=10", "train.batch_size=4"]
    )
    data = build_data(cfg)
    assert data.num_classes == 3 and data.info["n_train"] == 12 and data.info["dataset"] == "imagenet_subset"
    for x, y in data.train:
        assert torch.equal(raw(x, data.train).mean(dim=(2, 3)).argmax(1), y)
    with pytest.raises(DatasetNotFoundError, match="100 classes are not folders under .*first: "):
        build_data(compose_cfg(["data=imagenet100", f"data.root={tmp_path / 'imagenet'}"]))
