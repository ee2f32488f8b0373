"""CIFAR ResNets of He et al. 2016 (arXiv:1512.03385, sec. 4.2): 3 stages of n basic blocks, 16/32/64 channels.

ResNet-(6n+2): resnet20 has n=3 (0.27M parameters), resnet56 n=9 (0.85M). Shortcuts are option A
(identity, stride-2 subsampling and zero-padded channels), which is what gives the paper's parameter counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bnlab.models.activations import build_activation
from bnlab.models.init import init_weights
from bnlab.models.registry import register


class PadShortcut(nn.Module):
    """Option A: subsample spatially, zero-pad the new channels (no parameters)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.stride, self.extra = stride, out_ch - in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


def make_shortcut(kind: str, in_ch: int, out_ch: int, stride: int, norm) -> nn.Module:
    """Identity when shapes match; otherwise option A ("pad", He et al.'s CIFAR nets) or a 1x1 conv + norm
    ("projection", option B, used by the CIFAR ResNet-18 variant)."""
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    if kind == "pad":
        return PadShortcut(in_ch, out_ch, stride)
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), norm(out_ch))


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, norm, activation: str, shortcut: str = "pad"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = norm(out_ch)
        self.act1 = build_activation(activation)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = norm(out_ch)  # the residual branch's last norm: `zero_init_residual` targets it
        self.act2 = build_activation(activation)
        self.shortcut = make_shortcut(shortcut, in_ch, out_ch, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth, norm, in_channels=3, num_classes=10, width=1.0, activation="relu"):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        widths = [round(16 * width), round(32 * width), round(64 * width)]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            norm(widths[0]),
            build_activation(activation),
        )
        blocks, in_ch = [], widths[0]
        for stage, out_ch in enumerate(widths):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(in_ch, out_ch, stride, norm, activation))
                in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features before the classifier (the forum compares their statistics train vs eval)."""
        return self.pool(self.blocks(self.stem(x))).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _cifar_resnet(depth):
    def build(norm, in_channels, num_classes, width=1.0, activation="relu", init="kaiming", zero_init_residual=False):
        model = CifarResNet(depth, norm, in_channels, num_classes, width, activation)
        init_weights(model, init, zero_init_residual)
        return model

    return build


register("resnet20")(_cifar_resnet(20))
register("resnet56")(_cifar_resnet(56))
