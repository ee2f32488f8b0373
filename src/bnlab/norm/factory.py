"""`build_norm(cfg)` -> a callable `norm(num_channels) -> nn.Module`; models know nothing else about norms."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from bnlab.config_errors import ConfigError

NormFactory = Callable[[int], nn.Module]


def _batch(cfg) -> NormFactory:
    return lambda c: nn.BatchNorm2d(c, eps=cfg.get("eps", 1e-5), momentum=cfg.get("momentum", 0.1))


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
