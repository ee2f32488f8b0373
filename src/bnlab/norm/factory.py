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
from bnlab.norm.renorm import BatchRenorm2d, schedule_steps
from bnlab.norm.separate import SeparateBatchNorm2d
from bnlab.registry import Registry

NormFactory = Callable[[int], nn.Module]

# num_features comes from the model; device, dtype and process_group from the run, never from the config
NORMS = Registry("norm", runtime=("num_features", "device", "dtype", "process_group"))
NORMS.register("batch", BatchNorm2d)  # plain, Ghost (nbs < batch) or Sync (nbs > batch) BN
NORMS.register("frozen", FrozenBatchNorm2d)  # mean 0 / var 1 until loaded, precise-BN'd, or set by an experiment
NORMS.register("separate", SeparateBatchNorm2d)


@NORMS.register("renorm")
def batch_renorm(num_features: int, eps: float, momentum: float, r_max: float, d_max: float, warmup_steps: float,
                 r_max_full_at: float, d_max_full_at: float, nbs=None, ghost_layout: str = "contiguous",
                 schedule_unit: str = "steps", device=None, dtype=None) -> BatchRenorm2d:  # fmt: skip
    # schedule points in steps, or in EMA time constants 1/momentum (schedule_unit: ema_tau; norm/renorm.py)
    points = dict(warmup_steps=warmup_steps, r_max_full_at=r_max_full_at, d_max_full_at=d_max_full_at)
    at = {k: schedule_steps(v, schedule_unit, momentum) for k, v in points.items()}
    return BatchRenorm2d(num_features, eps, momentum, r_max=r_max, d_max=d_max, nbs=nbs, ghost_layout=ghost_layout,
                         device=device, dtype=dtype, **at)  # fmt: skip


@NORMS.register("virtual")
def virtual_batch_norm(num_features: int, eps: float, momentum: float, reference_size: int, device=None, dtype=None):
    # plain BatchNorm2d layers; the reference batch (norm.reference_size) is attached to the model (norm/attach.py)
    return BatchNorm2d(num_features, eps=eps, momentum=momentum, device=device, dtype=dtype)


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
