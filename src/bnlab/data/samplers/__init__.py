"""Batch samplers: each yields lists of dataset indices and composes with any dataset and loader.

Every sampler takes (labels, batch_size, seed, batches_per_epoch, **its config keys), reseeds its order from
(seed, epoch) in `set_epoch`, and yields `len(sampler)` batches per epoch (`train.batches_per_epoch` when set).
"""

from __future__ import annotations

from bnlab.config_errors import ConfigError
from bnlab.data.samplers.iid import IIDBatchSampler, SequentialBatchSampler
from bnlab.data.samplers.label_pairs import LabelPairBatchSampler, check_label_pair_config
from bnlab.data.samplers.oversampled import OversampledBatchSampler, check_oversampled_config

SAMPLERS = {"iid": IIDBatchSampler, "label_pairs": LabelPairBatchSampler, "oversampled": OversampledBatchSampler}
EVAL_SAMPLERS = ("sequential", "label_pairs")  # validation: each image once, or non-i.i.d. like training (C3)


def build_batch_sampler(cfg, labels, batch_size: int, seed: int, batches_per_epoch: int | None = None):
    name = cfg.get("name")
    if name not in SAMPLERS:
        raise ConfigError("sampler.name", f"unknown sampler {name!r}", allowed=sorted(SAMPLERS))
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    return SAMPLERS[name](
        labels=labels, batch_size=batch_size, seed=seed, batches_per_epoch=batches_per_epoch, **kwargs
    )


def build_eval_sampler(cfg, labels, batch_size: int, seed: int):
    """Validation batches from `eval.sampler` (absent = sequential). label_pairs draws about one pass of
    k*m-image batches (Ioffe 2017 evaluates BN in training mode on 25 x 2 = 50), the same every epoch, from the
    labels that have m validation images; `batch_size` (eval.batch_size) must equal k*m."""
    name = cfg.get("name", "sequential") if cfg is not None else "sequential"
    if name == "sequential":
        return SequentialBatchSampler(len(labels), batch_size)
    if name == "label_pairs":
        kwargs = {k: v for k, v in cfg.items() if k != "name"}
        n_batches = max(1, -(-len(labels) // batch_size))  # about one pass over the validation set
        return LabelPairBatchSampler(
            labels, batch_size, seed, n_batches, prefix="eval.sampler", drop_small_labels=True, **kwargs
        )
    raise ConfigError("eval.sampler.name", f"unknown eval sampler {name!r}", allowed=EVAL_SAMPLERS)


def validate_sampler_config(cfg) -> None:
    """Checks that need no data: called from bnlab.config.validate before anything is built."""
    scfg = cfg.sampler
    if scfg.get("name") == "label_pairs":
        check_label_pair_config(scfg, cfg.train.get("batch_size"))
        nbs = cfg.get("norm", {}).get("nbs")
        if scfg.get("interleave", "none") != "none" and isinstance(nbs, int) and nbs > scfg.labels_per_batch:
            raise ConfigError(
                "sampler.interleave",
                f"norm.nbs = {nbs} > sampler.labels_per_batch = {scfg.labels_per_batch}: ghost groups of {nbs} "
                f"cannot separate the {scfg.images_per_label} images of each label",
            )
    elif scfg.get("name") == "oversampled":
        check_oversampled_config(scfg)
    ecfg = cfg.get("eval", {}).get("sampler")
    name = ecfg.get("name", "sequential") if ecfg is not None else "sequential"
    if name not in EVAL_SAMPLERS:
        raise ConfigError("eval.sampler.name", f"got {name!r}", allowed=EVAL_SAMPLERS)
    if name == "label_pairs":  # eval.batch_size keeps one meaning (the norm checks read it): it must be k * m
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
