"""GroupNorm (Wu & He 2018) and LayerNorm as its one-group case: statistics of each sample, none of the batch.

The batch-independent references of the studies: no running statistics, train and eval modes compute the same.
"""

from __future__ import annotations

from torch import nn

import bnlab.norm.validate as check
from bnlab.config_errors import ConfigError
from bnlab.norm.layer import NormLayer


class GroupNorm(nn.GroupNorm, NormLayer, config_name="group"):
    """nn.GroupNorm; `norm=group`."""

    @classmethod
    def from_config(cls, num_features: int, groups: int, eps: float) -> GroupNorm:
        g = min(groups, num_features)  # capped at the channel count (16-channel layers get 16 groups)
        if num_features % g:
            raise ConfigError("norm.groups", f"{groups} groups do not divide {num_features} channels")
        return cls(g, num_features, eps=eps)

    @classmethod
    def check_config(cls, cfg) -> None:
        check.positive_int(cfg.norm, "groups")


class LayerNorm(nn.GroupNorm, NormLayer, config_name="layer"):
    """LayerNorm over (C, H, W) of each sample, with a per-channel affine: GroupNorm with one group; `norm=layer`."""

    @classmethod
    def from_config(cls, num_features: int, eps: float) -> LayerNorm:
        return cls(1, num_features, eps=eps)
