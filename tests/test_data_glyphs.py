"""The glyphs dataset: the rasterizer against exact areas, byte-identical regeneration, distinct classes, disjoint
train/test draws, the cache, and its wiring through build_data (eval-mode train images, each test image once)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from bnlab.config import validate
from bnlab.config_errors import ConfigError
from bnlab.data import build_data
from bnlab.data import glyphs as g
from bnlab.train import run_dir
from conftest import compose_cfg

SMALL = {"num_classes": 40, "train_per_class": 6, "test_per_class": 3}


def square(x0, y0, x1, y1, clockwise=False):
    pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    pts = pts[::-1] if clockwise else pts
    return np.array([[*pts[i], *pts[(i + 1) % 4]] for i in range(4)], float)


def test_rasterizer_covers_exact_areas_with_nonzero_winding():
    identity = np.array([[[1.0, 0, 0], [0, 1.0, 0]]])  # normalized units = pixels
    img = g.rasterize(square(4, 6, 14, 11), identity, 20)[0]  # 10 x 5 px, pixel-aligned
    assert img.sum() == pytest.approx(50) and img[6:11, 4:14].min() == 1
    half = g.rasterize(square(4.5, 6, 9.5, 8), identity, 20)[0]  # half pixels at both x ends: 4 full + 2 halves
    assert half.sum() == pytest.approx(10) and half[6, 4] == pytest.approx(0.5)
    # two overlapping squares wound the same way: their union (non-zero rule), not the even-odd XOR
    both = np.concatenate([square(2, 2, 8, 8), square(5, 5, 11, 11)])
    assert g.rasterize(both, identity, 16)[0].sum() == pytest.approx(36 + 36 - 9)
    # a hole wound the other way is empty
    ring = np.concatenate([square(2, 2, 12, 12), square(5, 5, 9, 9, clockwise=True)])
    assert g.rasterize(ring, identity, 16)[0].sum() == pytest.approx(100 - 16)


@pytest.mark.slow  # renders the 500-class set twice (~1 min)
def test_generation_is_byte_identical_and_classes_are_distinct():
    a, b = g.generate(**SMALL), g.generate(**SMALL)
    assert g.digest(*a[:4]) == g.digest(*b[:4])
    train_x, train_y, test_x, test_y, n = a
    assert n == 40 and train_x.shape == (240, 1, 28, 28) and train_x.dtype == np.uint8
    assert np.bincount(train_y).tolist() == [6] * 40 and np.bincount(test_y).tolist() == [3] * 40
    assert (train_x.reshape(240, -1).max(1) > 100).all()  # no empty image
    assert g.digest(*g.generate(**SMALL, seed=1)[:4]) != g.digest(*a[:4])  # the seed matters
    # the classes' canonical renderings differ by at least min_distance (no duplicate glyphs)
    classes = g.select_classes(28, 0.04)
    assert len(classes) > 700 and list(classes) == sorted(classes)
    centre = np.array([[[g.BOX * 28, 0, 14], [0, g.BOX * 28, 14]]])
    canon = np.stack([g.rasterize(g.outline_edges(g.STYLES[0], c), centre, 28)[0].ravel() for c in classes[:60]])
    dist = np.abs(canon[:, None] - canon[None]).mean(-1) + np.eye(60)
    assert dist.min() >= 0.04


def test_test_images_are_fresh_draws_and_a_style_can_be_held_out():
    train_x, _, test_x, test_y, _ = g.generate(**SMALL)
    seen = {x.tobytes() for x in train_x}
    assert not any(x.tobytes() in seen for x in test_x)
    held = g.generate(**SMALL, holdout_style="DejaVuSerif-BoldItalic")
    # the held-out style renders differently from every training style: test images change, train keeps 11 styles
    assert not np.array_equal(held[2], test_x) and np.array_equal(held[3], test_y)
    with pytest.raises(ValueError, match="holdout_style"):
        g.generate(**SMALL, holdout_style="Comic Sans")


def test_cache_is_keyed_by_parameters(tmp_path):
    cfg = OmegaConf.create({**SMALL, "cache_dir": str(tmp_path)})
    first = g.load_glyphs(cfg)
    files = list(tmp_path.glob("glyphs_*.npz"))
    assert len(files) == 1
    again = g.load_glyphs(cfg)
    assert all(torch.equal(x, y) for x, y in zip(first[:4], again[:4])) and first[4] == 40
    other = g.load_glyphs(OmegaConf.merge(cfg, {"jitter": {"rotation": 0.0}}))
    assert len(list(tmp_path.glob("glyphs_*.npz"))) == 2 and not torch.equal(other[0], first[0])


def test_build_data_glyphs_with_eval_train_images_and_pair_batches(tmp_path):
    over = [
        "data=glyphs",
        f"data.cache_dir={tmp_path}",
        "data.num_classes=40",
        "data.train_per_class=6",
        "data.test_per_class=4",
        "sampler=label_pairs",
        "train.batch_size=32",
        "eval.batch_size=50",
        "eval.sampler.name=label_pairs",
        "eval.train_images=100",
    ]
    cfg = compose_cfg(over)
    validate(cfg)
    data = build_data(cfg)
    assert data.num_classes == 40 and data.in_channels == 1 and data.image_size == 28
    # EMA evaluation sees every test image exactly once; batch-statistics evaluation gets 25 x 2 batches
    seen = torch.cat([y for _, y in data.val])
    assert torch.equal(seen, data.val.labels)
    for _, y in data.val_batch:
        assert len(y) == 50 and torch.equal(y[0::2], y[1::2])
    # eval-mode train accuracy: 100 fixed training images, not augmented, the same for another run seed
    images = torch.cat([x for x, _ in data.train_eval])
    assert images.shape == (100, 1, 28, 28)
    assert torch.equal(build_data(compose_cfg([*over, "seed=3"])).train_eval.images, data.train_eval.images)
    with pytest.raises(ConfigError, match="eval.train_images"):
        validate(compose_cfg([*over, "eval.train_images=-1"]))
    with pytest.raises(ConfigError, match="data.holdout_style"):
        validate(compose_cfg([*over, "data.holdout_style=Arial"]))


def test_eval_train_images_off_keeps_run_hashes():
    base = compose_cfg([])
    with_key = OmegaConf.to_container(base)
    with_key["eval"].pop("train_images")
    assert run_dir.run_id(OmegaConf.create(with_key)) == run_dir.run_id(base)
    assert run_dir.run_id(compose_cfg(["eval.train_images=10"])) != run_dir.run_id(base)


def test_run_records_eval_mode_error_on_training_images(tmp_path):
    from bnlab.models import build_model
    from bnlab.norm import build_norm
    from bnlab.runner import run
    from conftest import TINY

    cfg = compose_cfg([*TINY, "data=synthetic", "train.epochs=1", "eval.train_images=128"], tmp_path)
    summary = run(cfg)
    final = summary["final"]
    assert 0 <= final["train_err_running"] <= 1 and final["train_loss_running"] > 0
    # oracle: the saved model in eval mode on the same 128 training images
    data = build_data(cfg)
    model = build_model(cfg.model, build_norm(cfg.norm), data.in_channels, data.num_classes)
    model.load_state_dict(torch.load(f"{summary['run_dir']}/checkpoint.pt", weights_only=False)["model"])
    model.eval()
    with torch.no_grad():
        wrong = sum((model(x).argmax(1) != y).sum().item() for x, y in data.train_eval)
    assert final["train_err_running"] == pytest.approx(wrong / 128)
