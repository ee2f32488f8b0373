"""ImageNet-style ResNet-18/50 (He et al. 2016) from torchvision, with the norm factory and activation from config.

Used for Imagenette (Wu's NBS table is ResNet-50 on ImageNet; the forum user trained a custom ResNet-50).
torchvision builds every norm through `norm_layer(channels)`, which is exactly our factory's signature. Other
input channel counts (Fashion-MNIST is grayscale) get a fresh 7x7 stem conv with that many input channels.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from bnlab.models.activations import build_activation
from bnlab.models.init import init_weights
from bnlab.models.registry import register

ARCHS = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet50": (Bottleneck, [3, 4, 6, 3])}  # torchvision's own


class ImageNetResNet(ResNet):
    def features(self, x):
        """Pooled features before the classifier, as the CIFAR models expose them."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)


def _imagenet_resnet(arch: str):
    def build(norm, in_channels, num_classes, activation="relu", init="kaiming", zero_init_residual=False):
        block, layers = ARCHS[arch]
        model = ImageNetResNet(block, layers, num_classes=num_classes, norm_layer=norm)
        if in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if activation != "relu":
            # torchvision reuses one stateless `relu` module per block (and the stem): swap each for the activation
            for module in list(model.modules()):
                if isinstance(getattr(module, "relu", None), nn.ReLU):
                    module.relu = build_activation(activation)
        init_weights(model, init, zero_init_residual)
        return model

    return build


register("resnet18")(_imagenet_resnet("resnet18"))
register("resnet50")(_imagenet_resnet("resnet50"))
