"""Make a balanced training set imbalanced, so that oversampling rare classes (the forum's setup, claim C4) matters.

Configured as `data.imbalance: {classes: [...], keep_fraction: f}` and applied by build_data to the training
split only (after the holdout split and train_subset, before normalization constants and the batch sampler), so
validation stays balanced and every sampler sees the same imbalanced data.
"""

from __future__ import annotations

import torch

from bnlab.config_errors import ConfigError


def imbalance_indices(labels: torch.Tensor, cfg, num_classes: int, seed: int) -> torch.Tensor:
    """Indices into `labels` that keep a seeded `keep_fraction` (at least one image) of each listed class."""
    classes = list(cfg.get("classes") or [])
    fraction = cfg.get("keep_fraction")
    if not classes or not all(isinstance(c, int) and 0 <= c < num_classes for c in classes):
        raise ConfigError(
            "data.imbalance.classes", f"need a non-empty list of labels in [0, {num_classes}), got {classes}"
        )
    if not isinstance(fraction, int | float) or not 0 < fraction <= 1:
        raise ConfigError("data.imbalance.keep_fraction", f"must be in (0, 1], got {fraction!r}")
    gen = torch.Generator().manual_seed(seed)
    keep = torch.ones(len(labels), dtype=torch.bool)
    for c in sorted(set(classes)):
        members = (labels == c).nonzero().flatten()
        n_keep = max(1, round(fraction * len(members)))
        dropped = members[torch.randperm(len(members), generator=gen)[n_keep:]]
        keep[dropped] = False
    return keep.nonzero().flatten()
