"""Model registry: `build_model(cfg.model, norm_factory, in_channels, num_classes)`."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from bnlab.config_errors import ConfigError

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def deco(fn):
        MODELS[name] = fn
        return fn

    return deco


def build_model(cfg, norm, in_channels: int, num_classes: int) -> nn.Module:
    name = cfg.get("name")
    if name not in MODELS:
        raise ConfigError("model.name", f"unknown model {name!r}", allowed=sorted(MODELS))
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    accepted = set(inspect.signature(MODELS[name]).parameters) - {"norm", "in_channels", "num_classes"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(f"model.{unknown[0]}", f"not an option of model {name!r}", allowed=sorted(accepted))
    return MODELS[name](norm=norm, in_channels=in_channels, num_classes=num_classes, **kwargs)


# importing the modules fills the registry
from bnlab.models import convnet8, dwsep, mlp_deep, resnet18_cifar, resnet_cifar, resnet_imagenet  # noqa: E402,F401
