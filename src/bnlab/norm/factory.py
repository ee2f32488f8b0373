"""`build_norm(cfg)` -> a callable `norm(num_channels) -> nn.Module`; models know nothing else about norms.

Each `name:` of conf/norm/ is a registered constructor whose keyword arguments are the YAML's keys; the YAML
holds the defaults, the layer classes keep PyTorch's (for use without a config).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from bnlab.config_errors import ConfigError
from bnlab.norm.batchnorm import BatchNorm2d
from bnlab.norm.frozen import FrozenBatchNorm2d
from bnlab.norm.renorm import BatchRenorm2d
from bnlab.norm.separate import SeparateBatchNorm2d
from bnlab.registry import Registry

NormFactory = Callable[[int], nn.Module]

# num_features comes from the model; device, dtype and process_group from the run, never from the config
NORMS = Registry("norm", runtime=("num_features", "device", "dtype", "process_group"))
NORMS.register("batch", BatchNorm2d)  # plain, Ghost (nbs < batch) or Sync (nbs > batch) BN
NORMS.register("renorm", BatchRenorm2d)
NORMS.register("frozen", FrozenBatchNorm2d)  # mean 0 / var 1 until loaded, precise-BN'd, or set by an experiment
NORMS.register("separate", SeparateBatchNorm2d)


@NORMS.register("group")
def group_norm(num_features: int, groups: int, eps: float) -> nn.Module:
    g = min(groups, num_features)  # capped at the channel count (16-channel layers get 16 groups)
    if num_features % g:
        raise ConfigError("norm.groups", f"{groups} groups do not divide {num_features} channels")
    return nn.GroupNorm(g, num_features, eps=eps)


@NORMS.register("instance")
def instance_norm(num_features: int, eps: float) -> nn.Module:
    # affine, no running statistics: train and eval behave the same
    return nn.InstanceNorm2d(num_features, eps=eps, affine=True, track_running_stats=False)


@NORMS.register("layer")
def layer_norm(num_features: int, eps: float) -> nn.Module:
    # LayerNorm over (C, H, W) of each sample, with a per-channel affine: GroupNorm with one group
    return nn.GroupNorm(1, num_features, eps=eps)


@NORMS.register("none")
def identity(num_features: int) -> nn.Module:
    return nn.Identity()


def build_norm(cfg) -> NormFactory:
    return NORMS.partial(cfg)
