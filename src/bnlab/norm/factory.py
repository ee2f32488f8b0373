"""`build_norm(cfg)` -> a callable `norm(num_channels) -> nn.Module`; models know nothing else about norms.

Each `name:` of conf/norm/ is a layer class that registers itself (`NormLayer`'s config_name, norm/layer.py); its
`from_config` takes the YAML's keys as keyword arguments. The YAML holds the defaults, the layer classes keep
PyTorch's (for use without a config).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from bnlab.norm.layer import NORMS, load_layers

NormFactory = Callable[[int], nn.Module]

__all__ = ["NORMS", "NormFactory", "build_norm"]


def build_norm(cfg) -> NormFactory:
    load_layers()
    return NORMS.partial(cfg)
