"""`build_norm(cfg)` -> a callable `norm(num_channels) -> nn.Module`; models know nothing else about norms."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from bnlab.config_errors import ConfigError
from bnlab.norm.batchnorm import BatchNorm2d
from bnlab.norm.frozen import FrozenBatchNorm2d
from bnlab.norm.renorm import BatchRenorm2d
from bnlab.norm.separate import SeparateBatchNorm2d

NormFactory = Callable[[int], nn.Module]


def _batch(cfg) -> NormFactory:
    # plain, Ghost (nbs < batch) or Sync (nbs > batch) BN; nbs: null is nn.BatchNorm2d exactly
    kw = {
        "eps": cfg.get("eps", 1e-5),
        "momentum": cfg.get("momentum", 0.1),
        "nbs": cfg.get("nbs"),
        "ghost_layout": cfg.get("ghost_layout", "contiguous"),
        "train_stats": cfg.get("train_stats", "batch"),
        "update_stats": cfg.get("update_stats", True),
    }
    return lambda c: BatchNorm2d(c, **kw)


def _renorm(cfg) -> NormFactory:
    kw = {
        "eps": cfg.get("eps", 1e-5),
        "momentum": cfg.get("momentum", 0.01),
        "r_max": cfg.get("r_max", 3.0),
        "d_max": cfg.get("d_max", 5.0),
        "warmup_steps": cfg.get("warmup_steps", 5000),
        "r_max_full_at": cfg.get("r_max_full_at", 40000),
        "d_max_full_at": cfg.get("d_max_full_at", 25000),
        "nbs": cfg.get("nbs"),
        "ghost_layout": cfg.get("ghost_layout", "contiguous"),
    }
    return lambda c: BatchRenorm2d(c, **kw)


def _virtual(cfg) -> NormFactory:
    # plain BatchNorm2d layers; the reference batch (norm.reference_size) is attached to the model (norm/attach.py)
    return lambda c: BatchNorm2d(c, eps=cfg.get("eps", 1e-5), momentum=cfg.get("momentum", 0.1))


def _frozen(cfg) -> NormFactory:
    # statistics mean 0 / var 1 until loaded, precise-BN'd before freezing, or set by an experiment
    return lambda c: FrozenBatchNorm2d(c, eps=cfg.get("eps", 1e-5), trainable_affine=cfg.get("trainable_affine", True))


def _separate(cfg) -> NormFactory:
    kw = {"eps": cfg.get("eps", 1e-5), "momentum": cfg.get("momentum", 0.1)}
    return lambda c: SeparateBatchNorm2d(c, int(cfg.get("num_domains", 2)), **kw)


def _group(cfg) -> NormFactory:
    groups = int(cfg.get("groups", 32))

    def make(c: int) -> nn.Module:
        g = min(groups, c)
        if c % g:
            raise ConfigError("norm.groups", f"{groups} groups do not divide {c} channels")
        return nn.GroupNorm(g, c, eps=cfg.get("eps", 1e-5))

    return make


def _instance(cfg) -> NormFactory:
    # affine, no running statistics: train and eval behave the same
    return lambda c: nn.InstanceNorm2d(c, eps=cfg.get("eps", 1e-5), affine=True, track_running_stats=False)


def _layer(cfg) -> NormFactory:
    # LayerNorm over (C, H, W) of each sample, with a per-channel affine: GroupNorm with one group
    return lambda c: nn.GroupNorm(1, c, eps=cfg.get("eps", 1e-5))


def _none(cfg) -> NormFactory:
    return lambda c: nn.Identity()


NORMS: dict[str, Callable[..., NormFactory]] = {
    "batch": _batch,
    "renorm": _renorm,
    "virtual": _virtual,
    "frozen": _frozen,
    "separate": _separate,
    "group": _group,
    "instance": _instance,
    "layer": _layer,
    "none": _none,
}


def build_norm(cfg) -> NormFactory:
    name = cfg.get("name")
    if name not in NORMS:
        raise ConfigError("norm.name", f"unknown normalization {name!r}", allowed=sorted(NORMS))
    return NORMS[name](cfg)
