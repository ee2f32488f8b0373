"""The real training entry (`bnlab.runner.run`) with the new samplers, datasets and models, on tiny data."""

from __future__ import annotations

import math

import pandas as pd

from bnlab.runner import run

FINITE = ("train_loss", "train_err", "val_loss_running", "val_err_running", "val_loss_batch", "val_err_batch")


def assert_finite_run(summary, epochs):
    assert summary["status"] == "completed", summary.get("reason")
    metrics = pd.read_csv(f"{summary['run_dir']}/metrics.csv")
    assert list(metrics.epoch) == list(range(1, epochs + 1))
    for col in FINITE:
        assert metrics[col].map(math.isfinite).all(), col
    return metrics


def test_label_pairs_with_split_halves_ghost_bn_and_pair_eval(tiny_cfg):
    # C3's "split halves" arm: 16 x 2 batches, Ghost BN of 16 with each pair split across the halves;
    # validation in training mode on batches drawn the same way (16 x 2, so that they split into Ghost groups too)
    cfg = tiny_cfg(
        "sampler=label_pairs",
        "sampler.interleave=contiguous",
        "norm=ghost",
        "train.batch_size=32",
        "train.batches_per_epoch=6",
        "eval.sampler.name=label_pairs",
        "eval.sampler.labels_per_batch=16",
        "eval.batch_size=32",
        "data.val_subset=200",
    )
    summary = run(cfg)
    assert_finite_run(summary, 2)
    assert summary["step"] == 12  # train.batches_per_epoch is honoured


def test_synthetic_data_with_convnet8_softplus_and_no_norm(tiny_cfg):
    cfg = tiny_cfg(
        "data=synthetic",
        "data.n_train=512",
        "model=convnet8",
        "model.width=0.25",
        "model.activation=softplus",
        "norm=none",
        "train.batch_size=32",
        "optim.lr=0.02",
    )
    metrics = assert_finite_run(run(cfg), 2)
    assert metrics.train_loss.iloc[-1] < math.log(10)  # the class patterns are learnable


def test_oversampling_an_imbalanced_training_set(tiny_cfg):
    cfg = tiny_cfg(
        "sampler=oversampled",
        "data.imbalance={classes:[0,1,2],keep_fraction:0.1}",
        "train.batches_per_epoch=4",
        "train.epochs=1",
    )
    summary = run(cfg)
    assert_finite_run(summary, 1)
    counts = summary["data"]["train_class_counts"]
    assert max(counts[:3]) < min(counts[3:]) / 5  # the rare classes really are rare in the training set
