"""InstanceNorm (Ulyanov et al. 2016): each sample and channel normalized over (H, W), with an affine."""

from __future__ import annotations

from torch import nn

from bnlab.norm.layer import NormLayer


class InstanceNorm2d(nn.InstanceNorm2d, NormLayer, config_name="instance"):
    """Affine, no running statistics: train and eval behave the same; `norm=instance`."""

    @classmethod
    def from_config(cls, num_features: int, eps: float) -> InstanceNorm2d:
        return cls(num_features, eps=eps, affine=True, track_running_stats=False)
