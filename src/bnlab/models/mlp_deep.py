"""A deep fully-connected ReLU net of equal-width layers, for the constant-function collapse study (claim C6).

The Myrtle post ("How to train your ResNet 7", following Luther & Seung 2019) stacks fully-connected + ReLU
layers of one width with He init and N(0, 1) inputs: pooled over channels the activations look fine at depth 50,
but each unit has become almost constant. The norm from config (`norm=none` for the plain net) follows each linear
layer, or each activation with `norm_position: after_activation` (the post's "subtract the mean after each ReLU"
fix). It comes from the shared 2-d norm factory: features are viewed as (N, C, 1, 1) around it, so any factory
layer (BN, ghost BN, GN, ...) works on the MLP unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from bnlab.config_errors import ConfigError
from bnlab.models.activations import build_activation
from bnlab.models.init import init_weights
from bnlab.models.registry import register

NORM_POSITIONS = ("before_activation", "after_activation")


class Norm1d(nn.Module):
    """Apply a 2-d norm layer to (N, C) features by viewing them as (N, C, 1, 1)."""

    def __init__(self, norm2d: nn.Module):
        super().__init__()
        self.norm = norm2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x[:, :, None, None]).flatten(1)


class MLPDeep(nn.Module):
    def __init__(
        self,
        in_features: int,
        num_classes: int,
        norm=None,  # factory `norm(channels)`; None or norm=none: a plain MLP
        depth: int = 50,
        width: int = 256,
        activation: str = "relu",
        norm_position: str = "before_activation",
    ):
        super().__init__()
        if norm_position not in NORM_POSITIONS:
            raise ConfigError("model.norm_position", f"got {norm_position!r}", allowed=NORM_POSITIONS)
        if depth < 1:
            raise ConfigError("model.depth", f"must be >= 1, got {depth}")
        self.in_features = in_features
        layers = []
        for i in range(depth):  # hidden layer i: linear -> [norm] -> act, or linear -> act -> [norm]
            norm_layer = Norm1d(norm(width)) if norm is not None else nn.Identity()
            act = build_activation(activation)
            pair = [norm_layer, act] if norm_position == "before_activation" else [act, norm_layer]
            layers.append(nn.Sequential(nn.Linear(in_features if i == 0 else width, width), *pair))
        self.hidden = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise ValueError(
                f"mlp_deep expects {self.in_features} input features, got {x.shape[1]} "
                "(set model.input_size to the image size of data)"
            )
        return self.hidden(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


_UNITS = {"depth": "hidden layers", "width": "units per hidden layer"}


@register("mlp_deep")
def mlp_deep(
    norm,
    in_channels,
    num_classes,
    depth=50,
    width=256,
    input_size=28,
    activation="relu",
    norm_position="before_activation",
    init="kaiming_fan_in",
):
    for key, value in (("depth", depth), ("width", width)):  # counts here (ResNets' model.width is a multiplier)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"model.{key}", f"counts {_UNITS[key]} in mlp_deep: a positive integer, got {value!r}")
    if isinstance(norm(width), nn.modules.instancenorm._InstanceNorm):
        raise ConfigError("norm.name", "instance norm needs spatial positions; an MLP feature has one (use layer)")
    in_features = in_channels * input_size * input_size  # images are flattened
    model = MLPDeep(in_features, num_classes, norm, depth, width, activation, norm_position)
    init_weights(model, init)
    return model
