"""Batch samplers: each yields lists of dataset indices and composes with any dataset and loader.

Every sampler takes (labels, batch_size, seed, batches_per_epoch, **its config keys), reseeds its order from
(seed, epoch) in `set_epoch`, and yields `len(sampler)` batches per epoch (`train.batches_per_epoch` when set).
"""

from __future__ import annotations

import functools

from bnlab.config_errors import ConfigError
from bnlab.data.samplers.iid import IIDBatchSampler, SequentialBatchSampler
from bnlab.data.samplers.label_pairs import LabelPairBatchSampler, check_label_pair_config
from bnlab.data.samplers.oversampled import OversampledBatchSampler, check_oversampled_config
from bnlab.registry import Registry

# the data pipeline supplies labels, batch size, seed and epoch length; the config the sampler's own keys
SAMPLERS = Registry("sampler", runtime=("labels", "batch_size", "seed", "batches_per_epoch", "prefix"))
SAMPLERS.register("iid", IIDBatchSampler)
SAMPLERS.register("label_pairs", LabelPairBatchSampler)
SAMPLERS.register("oversampled", OversampledBatchSampler)

# validation batches (eval.sampler): each image once, or non-i.i.d. like training (C3)
EVAL_SAMPLERS = Registry("eval sampler", runtime=("labels", "batch_size", "seed", "batches_per_epoch", "prefix"))


@EVAL_SAMPLERS.register("sequential")
def sequential(labels, batch_size: int, seed: int, batches_per_epoch: int, prefix: str) -> SequentialBatchSampler:
    return SequentialBatchSampler(len(labels), batch_size)


# a validation subset may leave a label with one image: draw only labels that can fill a pair
EVAL_SAMPLERS.register("label_pairs", functools.partial(LabelPairBatchSampler, drop_small_labels=True))


def build_batch_sampler(cfg, labels, batch_size: int, seed: int, batches_per_epoch: int | None = None):
    return SAMPLERS.build(cfg, labels=labels, batch_size=batch_size, seed=seed, batches_per_epoch=batches_per_epoch)


def build_eval_sampler(cfg, labels, batch_size: int, seed: int):
    """Validation batches from `eval.sampler` (absent = sequential). label_pairs draws about one pass of
    k*m-image batches (Ioffe 2017 evaluates BN in training mode on 25 x 2 = 50), the same every epoch, from the
    labels that have m validation images; `batch_size` (eval.batch_size) must equal k*m."""
    cfg = _eval_sampler_cfg(cfg)
    n_batches = max(1, -(-len(labels) // batch_size))  # about one pass over the validation set
    make = EVAL_SAMPLERS.partial(cfg, "eval.sampler", shared=_SEQUENTIAL_IGNORES)
    return make(labels=labels, batch_size=batch_size, seed=seed, batches_per_epoch=n_batches, prefix="eval.sampler")


# conf/train.yaml's eval.sampler keeps the label_pairs keys beside `name: sequential`, which ignores them
_SEQUENTIAL_IGNORES = ("labels_per_batch", "images_per_label")


def _eval_sampler_cfg(cfg):
    return cfg if cfg is not None and cfg.get("name") is not None else {"name": "sequential", **(cfg or {})}


def _check_label_groups_vs_ghost_groups(cfg) -> None:
    """k x m batches normalized in Ghost groups: the m images of a label share a group unless `interleave` splits
    them on purpose; a group size that cuts some label groups and not others is a silent mix of both (C3)."""
    scfg, norm = cfg.sampler, cfg.get("norm", {})
    nbs, m, batch = norm.get("nbs"), scfg.images_per_label, cfg.train.get("batch_size")
    if not isinstance(nbs, int) or isinstance(nbs, bool):
        return
    if scfg.get("interleave", "none") != "none":
        if nbs > scfg.labels_per_batch:
            raise ConfigError(
                "sampler.interleave",
                f"norm.nbs = {nbs} > sampler.labels_per_batch = {scfg.labels_per_batch}: ghost groups of {nbs} "
                f"cannot separate the {m} images of each label",
            )
        return
    if not isinstance(batch, int) or nbs >= batch:
        return
    layout = norm.get("ghost_layout", "contiguous")
    if layout == "strided" or nbs % m:
        cut = "every label's" if layout == "strided" else "some labels'"
        raise ConfigError(
            "norm.nbs",
            f"ghost groups of nbs={nbs} ({layout}) in batches of {batch} cut {cut} {m} images (sampler=label_pairs "
            f"with sampler.images_per_label={m}) into different groups; use a contiguous nbs that is a multiple of "
            f"{m} to keep them together, or sampler.interleave to split every label on purpose",
        )


def validate_sampler_config(cfg) -> None:
    """Checks that need no data: called from bnlab.config.validate before anything is built."""
    scfg = cfg.sampler
    SAMPLERS.check(scfg)
    if scfg.get("name") == "label_pairs":
        check_label_pair_config(scfg, cfg.train.get("batch_size"))
        _check_label_groups_vs_ghost_groups(cfg)
    elif scfg.get("name") == "oversampled":
        check_oversampled_config(scfg)
    ecfg = _eval_sampler_cfg(cfg.get("eval", {}).get("sampler"))
    EVAL_SAMPLERS.check(ecfg, "eval.sampler", shared=_SEQUENTIAL_IGNORES)
    if ecfg.get("name") == "label_pairs":  # eval.batch_size keeps one meaning (norm checks read it): k * m
        kwargs = {k: v for k, v in ecfg.items() if k != "name"}
        eval_bs = cfg.eval.get("batch_size") or cfg.train.get("batch_size")
        check_label_pair_config(kwargs, eval_bs, "eval.sampler", batch_key="eval.batch_size (null = train.batch_size)")


__all__ = [
    "EVAL_SAMPLERS",
    "SAMPLERS",
    "IIDBatchSampler",
    "LabelPairBatchSampler",
    "OversampledBatchSampler",
    "SequentialBatchSampler",
    "build_batch_sampler",
    "build_eval_sampler",
    "validate_sampler_config",
]
