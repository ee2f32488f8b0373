"""A MobileNet-style stack of depthwise-separable blocks (Howard et al. 2017, arXiv:1704.04861, sec. 3.1).

Each block is pointwise 1x1 conv -> norm -> act -> depthwise 3x3 conv (stride s) -> norm -> act, i.e.
MobileNet's two factorized convs with the pointwise one first, so every block ends in a per-channel depthwise
conv whose output channel c sees only input channel c. A channel that the ReLU before it zeroes on every
training image therefore reaches its norm as an exact constant: the setting in which BN's running_var decays to
float32's denormal fixed point (the forum thread of claim C4). Layout:

    stem 3x3 conv (stride 1, small images) | stages of `blocks[i]` blocks with `channels[i]` outputs, the first
    block of stage i with stride `strides[i]` | global average pool | linear

The default, 32 | 64 | 128 x2 | 256 x2 | 512 x2 with strides 1, 2, 2, 2, is a CIFAR-sized MobileNet
(0.55M parameters at width 1 for 3-channel input); `width` multiplies every channel count (MobileNet's alpha).
"""

from __future__ import annotations

import torch
from torch import nn

from bnlab.config_errors import ConfigError
from bnlab.models.activations import build_activation
from bnlab.models.init import init_weights
from bnlab.models.registry import register


class SeparableBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, norm, activation: str):
        super().__init__()
        self.pw = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.norm_pw = norm(out_ch)
        self.act1 = build_activation(activation)
        self.dw = nn.Conv2d(out_ch, out_ch, 3, stride, 1, groups=out_ch, bias=False)
        self.norm_dw = norm(out_ch)
        self.act2 = build_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.norm_dw(self.dw(self.act1(self.norm_pw(self.pw(x))))))


class DepthwiseSeparableNet(nn.Module):
    def __init__(self, norm, in_channels, num_classes, stem, channels, blocks, strides, width, activation):
        super().__init__()
        if not (len(channels) == len(blocks) == len(strides)) or not channels:
            raise ConfigError(
                "model.channels", f"channels {channels}, blocks {blocks}, strides {strides}: need equal, non-empty"
            )
        if width <= 0:
            raise ConfigError("model.width", f"must be > 0, got {width}")
        scale = lambda c: max(1, round(c * width))
        c_in = scale(stem)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c_in, 3, 1, 1, bias=False), norm(c_in), build_activation(activation)
        )
        layers = []
        for c, n, s in zip(channels, blocks, strides, strict=True):
            for i in range(int(n)):
                layers.append(SeparableBlock(c_in, scale(c), int(s) if i == 0 else 1, norm, activation))
                c_in = scale(c)
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


@register("dwsep")
def dwsep(
    norm,
    in_channels,
    num_classes,
    stem=32,
    channels=(64, 128, 256, 512),
    blocks=(1, 2, 2, 2),
    strides=(1, 2, 2, 2),
    width=1.0,
    activation="relu",
    init="kaiming",
):
    model = DepthwiseSeparableNet(
        norm, in_channels, num_classes, stem, list(channels), list(blocks), list(strides), width, activation
    )
    init_weights(model, init)
    return model
