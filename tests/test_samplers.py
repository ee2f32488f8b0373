"""Batch samplers: exact composition of the k x m batches, ghost-group separation, oversampling frequencies,
valid indices, seeding, epoch length, and the config errors that name their keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from bnlab.config import validate
from bnlab.config_errors import ConfigError
from bnlab.data.samplers import (
    IIDBatchSampler,
    LabelPairBatchSampler,
    OversampledBatchSampler,
    SequentialBatchSampler,
    build_batch_sampler,
    build_eval_sampler,
)
from conftest import compose_cfg


def labels_10(n_per_class=30, classes=10):
    return torch.arange(classes).repeat_interleave(n_per_class)[torch.randperm(n_per_class * classes)]


def group_positions(k, m, interleave):
    """Positions in the batch of each of the k label groups, undoing the configured order."""
    pos = np.arange(k * m)
    return pos.reshape(m, k).T if interleave == "contiguous" else pos.reshape(k, m)


def label_groups(batch, labels, k, m, interleave):
    """(labels, image indices) of each label group of a batch."""
    b = np.asarray(batch)
    return [(labels[b[p]].tolist(), b[p].tolist()) for p in group_positions(k, m, interleave)]


@pytest.mark.parametrize("interleave", ["none", "contiguous", "strided"])
@pytest.mark.parametrize("distinct", [False, True])
def test_label_pair_batches_are_k_groups_of_m_same_label_images(interleave, distinct):
    labels = labels_10()
    k, m = (8, 2) if distinct else (16, 2)
    sampler = LabelPairBatchSampler(
        labels, k * m, 3, labels_per_batch=k, images_per_label=m, distinct_labels=distinct, interleave=interleave
    )
    batches = list(sampler)
    assert len(batches) == len(labels) // (k * m)
    for batch in batches:
        assert len(batch) == k * m and all(0 <= i < len(labels) for i in batch)
        groups = label_groups(batch, labels, k, m, interleave)
        for group_labels, idx in groups:
            assert len(set(group_labels)) == 1, "a group mixes labels"
            assert len(set(idx)) == m, "a group repeats an image"
        drawn = [g[0][0] for g in groups]
        if distinct:
            assert len(set(drawn)) == k


def test_paper_setup_16x2_with_distinct_labels_on_many_classes():
    labels = labels_10(n_per_class=6, classes=40)
    sampler = LabelPairBatchSampler(labels, 32, 0, labels_per_batch=16, images_per_label=2, distinct_labels=True)
    for batch in sampler:
        groups = label_groups(batch, labels, 16, 2, "none")
        assert len({g[0][0] for g in groups}) == 16 and all(len(set(g[0])) == 1 for g in groups)


def test_with_replacement_repeats_labels_on_ten_classes():
    labels = labels_10()
    sampler = LabelPairBatchSampler(labels, 32, 0, labels_per_batch=16, images_per_label=2)
    # 16 draws from 10 labels must repeat one (pigeonhole): with replacement is what the paper does
    assert all(len({labels[i].item() for i in b}) < 16 for b in sampler)


def ghost_groups(batch_size, nbs, layout):
    """Group of each position, as Ghost BN forms them (conf/norm/batch.yaml: ghost_layout)."""
    pos = np.arange(batch_size)
    return pos // nbs if layout == "contiguous" else pos % (batch_size // nbs)


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("k,m,nbs", [(16, 2, 16), (16, 2, 8), (8, 4, 8), (8, 4, 2)])
def test_interleave_separates_label_group_members_across_ghost_groups(layout, k, m, nbs):
    labels = labels_10()
    sampler = LabelPairBatchSampler(labels, k * m, 1, labels_per_batch=k, images_per_label=m, interleave=layout)
    group_of = ghost_groups(k * m, nbs, layout)
    for batch in sampler:
        for positions in group_positions(k, m, layout):
            assert len(set(labels[np.asarray(batch)[positions]].tolist())) == 1
            assert len(set(group_of[positions])) == m, "two images of a label group share a ghost group"


def test_without_interleave_a_contiguous_split_keeps_label_groups_together():
    # the contrast arm: as drawn, the m images of a group are adjacent, so contiguous halves hold both of a pair
    labels = labels_10()
    sampler = LabelPairBatchSampler(labels, 32, 1, labels_per_batch=16, images_per_label=2, interleave="none")
    group_of = ghost_groups(32, 16, "contiguous")
    for batch in sampler:
        assert all(group_of[2 * g] == group_of[2 * g + 1] for g in range(16))
        assert labels[batch[0]] == labels[batch[1]]


def test_label_pair_errors_name_their_keys():
    labels = labels_10()
    with pytest.raises(ConfigError, match=r"sampler.labels_per_batch.*16 x 2 = 32.*train.batch_size = 64"):
        LabelPairBatchSampler(labels, 64, labels_per_batch=16, images_per_label=2)
    with pytest.raises(ConfigError, match=r"sampler.labels_per_batch.*only 10 labels"):
        LabelPairBatchSampler(labels, 32, labels_per_batch=16, images_per_label=2, distinct_labels=True)
    rare = torch.cat([labels, torch.tensor([10])])  # label 10 has a single image
    with pytest.raises(ConfigError, match=r"sampler.images_per_label.*\{10: 1\}"):
        LabelPairBatchSampler(rare, 32, labels_per_batch=16, images_per_label=2)
    with pytest.raises(ConfigError, match="sampler.interleave"):
        LabelPairBatchSampler(labels, 32, labels_per_batch=16, images_per_label=2, interleave="halves")


def test_composed_config_checks_k_times_m_against_the_batch_sizes():
    validate(compose_cfg(["sampler=label_pairs", "train.batch_size=32"]))
    with pytest.raises(ConfigError, match=r"train.batch_size = 128"):
        validate(compose_cfg(["sampler=label_pairs"]))
    with pytest.raises(ConfigError, match="eval.sampler.labels_per_batch"):
        validate(compose_cfg(["sampler=label_pairs", "train.batch_size=32", "eval.sampler.name=label_pairs"]))
    validate(compose_cfg(["train.batch_size=32", "eval.sampler.name=label_pairs", "eval.batch_size=50"]))
    # full validation batches, so the norm's short-last-batch check passes and the interleave rule is what fires
    over = [
        "sampler=label_pairs",
        "train.batch_size=32",
        "sampler.interleave=contiguous",
        "++norm.nbs=32",
        "data.val_subset=2048",
    ]
    with pytest.raises(ConfigError, match="sampler.interleave"):
        validate(compose_cfg(over))


def test_oversampled_class_frequencies_match_their_weights():
    # imbalanced: class c has 10 * (c + 1) images
    labels = torch.cat([torch.full((10 * (c + 1),), c) for c in range(5)])
    draws_per_case = 20_000
    cases = {
        "balanced": ("balanced", 1.0, np.full(5, 0.2)),
        "natural": ("inverse_power", 0.0, np.arange(1, 6) / 15),
        "sqrt": ("inverse_power", 0.5, np.sqrt(np.arange(1, 6)) / np.sqrt(np.arange(1, 6)).sum()),
        "explicit": ([4, 0, 1, 1, 2], 1.0, np.array([0.5, 0, 0.125, 0.125, 0.25])),
    }
    for name, (weights, power, expected) in cases.items():
        s = OversampledBatchSampler(labels, 40, 0, draws_per_case // 40, class_weights=weights, power=power)
        idx = torch.tensor([i for b in s for i in b])
        assert len(idx) == draws_per_case and idx.min() >= 0 and idx.max() < len(labels)
        freq = np.bincount(labels[idx].numpy(), minlength=5) / len(idx)
        tolerance = 4 * np.sqrt(expected * (1 - expected) / len(idx)) + 1e-9  # 4 binomial standard errors
        assert np.all(np.abs(freq - expected) <= tolerance), (name, freq, expected)


def test_oversampled_rejects_bad_weights():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(ConfigError, match="sampler.class_weights"):
        OversampledBatchSampler(labels, 2, class_weights="rare_first")
    with pytest.raises(ConfigError, match="3 classes"):
        OversampledBatchSampler(labels, 2, class_weights=[1, 1])
    with pytest.raises(ConfigError, match=r"class\(es\) \[3\]"):
        OversampledBatchSampler(labels, 2, class_weights=[1, 1, 1, 1])


SAMPLER_CFGS = {
    "iid": {"name": "iid", "drop_last": True},
    "label_pairs": {"name": "label_pairs", "labels_per_batch": 8, "images_per_label": 2, "interleave": "strided"},
    "oversampled": {"name": "oversampled", "class_weights": "balanced"},
}


@pytest.mark.parametrize("name", sorted(SAMPLER_CFGS))
def test_every_sampler_is_seeded_per_epoch_and_honours_batches_per_epoch(name):
    labels = labels_10()
    cfg = OmegaConf.create(SAMPLER_CFGS[name])
    make = lambda seed, bpe=None: build_batch_sampler(cfg, labels, 16, seed, bpe)
    first, again, other = make(0), make(0), make(1)
    assert list(first) == list(again), "same seed, different order"
    assert list(first) != list(other), "different seeds, same order"
    epoch0 = list(first)
    first.set_epoch(1)
    assert list(first) != epoch0, "epochs repeat the same order"
    long = make(0, bpe=50)  # more batches than one pass over the 300 images
    batches = list(long)
    assert len(long) == 50 and len(batches) == 50
    assert all(len(b) == 16 and all(0 <= i < len(labels) for i in b) for b in batches)


def test_eval_sampler_sequential_and_label_pairs():
    labels = labels_10(n_per_class=10)
    seq = build_eval_sampler(OmegaConf.create({"name": "sequential"}), labels, 32, 0)
    assert isinstance(seq, SequentialBatchSampler) and sum(map(len, seq)) == 100
    cfg = OmegaConf.create({"name": "label_pairs", "labels_per_batch": 25, "images_per_label": 2})
    pairs = build_eval_sampler(cfg, labels, 50, 0)
    batches = list(pairs)
    assert len(batches) == 2 and batches == list(pairs), "eval batches must be the same at every evaluation"
    for batch in batches:
        assert all(len(set(lab)) == 1 for lab, _ in label_groups(batch, labels, 25, 2, "none"))
    with pytest.raises(ConfigError, match="eval.sampler.labels_per_batch"):
        build_eval_sampler(cfg, labels, 32, 0)


def test_iid_sampler_is_unchanged():
    s = IIDBatchSampler(torch.zeros(100), 32, seed=0)
    batches = list(s)
    assert len(batches) == 3 and len({i for b in batches for i in b}) == 96
