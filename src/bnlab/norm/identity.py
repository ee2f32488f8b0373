"""No normalization (`norm=none`): the networks of the studies' "without BN" arms."""

from __future__ import annotations

from torch import nn

from bnlab.norm.layer import NormLayer


class NoNorm(nn.Identity, NormLayer, config_name="none"):
    """nn.Identity that takes the channel count it is built with."""

    @classmethod
    def from_config(cls, num_features: int) -> NoNorm:
        return cls()
