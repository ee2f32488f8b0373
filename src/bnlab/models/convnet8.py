"""The 8-layer unbranched conv net of the Myrtle.ai post "How to train your ResNet 7: batch norm" (D. Page, 2019).

The post's text says only "a simple, 8-layer, unbranched conv net" with max-pooling whose classifier sees the
output of a ReLU and a max-pool; the layout below is the post's companion notebook (`nets['simple']` in
davidcpage/cifar10-fast, batch_norm_post.ipynb): seven 3x3 conv-norm-act blocks and a classifier,

    prep 64 | 128, maxpool 2, 128 | 256, maxpool 2, 256 | 512, maxpool 2, 512 | global max-pool | linear x 0.125

i.e. the ResNet-9 backbone of the series with each residual branch replaced by one extra conv block. No
shortcuts, so depth effects are not diluted. `norm=none` gives the post's "no batch norm" net; `activation:
softplus` its smooth ReLU for Hessian-vector products; `norm_position: after_activation` its conv-act-norm variant.
"""

from __future__ import annotations

import torch
from torch import nn

from bnlab.config_errors import ConfigError
from bnlab.models.activations import build_activation
from bnlab.models.init import init_weights
from bnlab.models.registry import register

NORM_POSITIONS = ("before_activation", "after_activation")


def conv_block(in_ch: int, out_ch: int, norm, activation: str, norm_position: str) -> nn.Sequential:
    layers = [nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False), norm(out_ch), build_activation(activation)]
    if norm_position == "after_activation":
        layers[1], layers[2] = layers[2], layers[1]
    return nn.Sequential(*layers)


class ConvNet8(nn.Module):
    def __init__(
        self,
        norm,
        in_channels=3,
        num_classes=10,
        width=1.0,
        activation="relu",
        norm_position="before_activation",
        output_scale=0.125,
    ):
        super().__init__()
        if norm_position not in NORM_POSITIONS:
            raise ConfigError("model.norm_position", f"got {norm_position!r}", allowed=NORM_POSITIONS)
        prep, c1, c2, c3 = (round(c * width) for c in (64, 128, 256, 512))
        block = lambda i, o: conv_block(i, o, norm, activation, norm_position)
        self.layers = nn.Sequential(
            block(in_channels, prep),
            block(prep, c1),
            nn.MaxPool2d(2),
            block(c1, c1),
            block(c1, c2),
            nn.MaxPool2d(2),
            block(c2, c2),
            block(c2, c3),
            nn.MaxPool2d(2),
            block(c3, c3),
        )
        self.pool = nn.AdaptiveMaxPool2d(1)  # = the notebook's MaxPool2d(4) on 32x32 inputs; any size works
        self.fc = nn.Linear(c3, num_classes, bias=False)
        self.output_scale = output_scale  # cifar10-fast scales the logits by 1/8

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.layers(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x)) * self.output_scale


@register("convnet8")
def convnet8(
    norm,
    in_channels,
    num_classes,
    width=1.0,
    activation="relu",
    norm_position="before_activation",
    output_scale=0.125,
    init="kaiming_fan_in",
):
    model = ConvNet8(norm, in_channels, num_classes, width, activation, norm_position, output_scale)
    init_weights(model, init)
    return model
