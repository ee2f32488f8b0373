"""Weight init options, shared by every model, and gamma of the last norm in each residual branch 1 or 0.

- `default`: PyTorch's own layer init (reset, so torchvision models lose their built-in He init too).
- `kaiming`: He et al. 2015 normal init of convs with fan_out (torchvision's ResNet convention); linear layers
  keep PyTorch's default.
- `kaiming_fan_in`: He et al. 2015 as the paper states it, N(0, 2/fan_in) for every conv and linear weight, zero
  biases: the forward-variance-preserving init the Myrtle post uses for its constant-function collapse study.
"""

from __future__ import annotations

from torch import nn

from bnlab.config_errors import ConfigError

INITS = ("default", "kaiming", "kaiming_fan_in")


def residual_last_norms(model: nn.Module) -> list[nn.Module]:
    """The norm closing each residual branch: bn3 of a bottleneck block, bn2 of a basic block."""
    from torchvision.models.resnet import Bottleneck

    found = []
    for m in model.modules():
        last = m.bn3 if isinstance(m, Bottleneck) else getattr(m, "bn2", None)
        if last is not None:
            found.append(last)
    return found


def init_weights(model: nn.Module, init: str = "kaiming", zero_init_residual: bool = False) -> None:
    if init not in INITS:
        raise ConfigError("model.init", f"unknown init {init!r}", allowed=INITS)
    for m in model.modules():
        if not isinstance(m, nn.Conv2d | nn.Linear):
            continue
        if init == "default":
            m.reset_parameters()
        elif init == "kaiming" and isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif init == "kaiming" and isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, a=5**0.5)  # PyTorch's own default for the classifier
        elif init == "kaiming_fan_in":
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    if zero_init_residual:
        # Goyal et al. 2017: each residual branch starts as identity (norms without an affine weight are skipped)
        for norm in residual_last_norms(model):
            if getattr(norm, "weight", None) is not None:
                nn.init.zeros_(norm.weight)
