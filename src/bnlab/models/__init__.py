"""Model registry: `build_model(cfg.model, norm_factory, in_channels, num_classes)`."""

from __future__ import annotations

from torch import nn

# importing the model modules fills the registry
from bnlab.models import convnet8, dwsep, mlp_deep, resnet18_cifar, resnet_cifar, resnet_imagenet  # noqa: F401
from bnlab.models.registry import MODELS, register


def build_model(cfg, norm, in_channels: int, num_classes: int) -> nn.Module:
    return MODELS.build(cfg, norm=norm, in_channels=in_channels, num_classes=num_classes)


__all__ = ["MODELS", "build_model", "register"]
