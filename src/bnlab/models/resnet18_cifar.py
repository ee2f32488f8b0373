"""ResNet-18 adapted to 32x32 inputs (the widely used CIFAR variant of He et al. 2016's ImageNet ResNet-18).

Differences from the ImageNet model: a 3x3 stride-1 stem and no max-pool, so the four stages of two basic blocks
(64-128-256-512 channels) see 32, 16, 8 and 4 pixels. Shortcuts that change shape are projections (option B:
1x1 conv + norm). About 11.2M parameters for 10 classes.
"""

from __future__ import annotations

import torch
from torch import nn

from bnlab.models.activations import build_activation
from bnlab.models.init import init_weights
from bnlab.models.registry import register
from bnlab.models.resnet_cifar import BasicBlock


class ResNet18Cifar(nn.Module):
    def __init__(self, norm, in_channels=3, num_classes=10, width=1.0, activation="relu"):
        super().__init__()
        widths = [round(c * width) for c in (64, 128, 256, 512)]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            norm(widths[0]),
            build_activation(activation),
        )
        blocks, in_ch = [], widths[0]
        for stage, out_ch in enumerate(widths):
            for i in range(2):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(in_ch, out_ch, stride, norm, activation, shortcut="projection"))
                in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.blocks(self.stem(x))).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


@register("resnet18_cifar")
def resnet18_cifar(
    norm, in_channels, num_classes, width=1.0, activation="relu", init="kaiming", zero_init_residual=False
):
    model = ResNet18Cifar(norm, in_channels, num_classes, width, activation)
    init_weights(model, init, zero_init_residual)
    return model
