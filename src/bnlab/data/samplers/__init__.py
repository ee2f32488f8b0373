"""Batch samplers: each yields lists of dataset indices and composes with any dataset and loader."""

from __future__ import annotations

from bnlab.config_errors import ConfigError
from bnlab.data.samplers.iid import IIDBatchSampler, SequentialBatchSampler

SAMPLERS = {"iid": IIDBatchSampler}


def build_batch_sampler(cfg, labels, batch_size: int, seed: int, batches_per_epoch: int | None = None):
    name = cfg.get("name")
    if name not in SAMPLERS:
        raise ConfigError("sampler.name", f"unknown sampler {name!r}", allowed=sorted(SAMPLERS))
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    return SAMPLERS[name](
        labels=labels, batch_size=batch_size, seed=seed, batches_per_epoch=batches_per_epoch, **kwargs
    )


__all__ = ["SAMPLERS", "IIDBatchSampler", "SequentialBatchSampler", "build_batch_sampler"]
