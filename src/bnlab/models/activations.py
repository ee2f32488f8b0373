"""Activation by name, so the Myrtle-post studies can swap ReLU for softplus from config."""

from __future__ import annotations

from torch import nn

from bnlab.config_errors import ConfigError

ACTIVATIONS = {
    "relu": lambda: nn.ReLU(inplace=True),
    "softplus": lambda: nn.Softplus(),
    "celu": lambda: nn.CELU(alpha=0.3),  # used in cifar10-fast's later versions
    "gelu": lambda: nn.GELU(),
    "identity": lambda: nn.Identity(),
}


def build_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError("model.activation", f"unknown activation {name!r}", allowed=sorted(ACTIVATIONS))
    return ACTIVATIONS[name]()
