"""Weight init options: PyTorch default or He/Kaiming; gamma of the last norm in each residual branch 1 or 0."""

from __future__ import annotations

from torch import nn

from bnlab.config_errors import ConfigError

INITS = ("default", "kaiming")


def init_weights(model: nn.Module, init: str = "kaiming", zero_init_residual: bool = False) -> None:
    if init not in INITS:
        raise ConfigError("model.init", f"unknown init {init!r}", allowed=INITS)
    if init == "kaiming":  # He et al. 2015, fan_out as in torchvision's ResNets
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, a=5**0.5)  # PyTorch's own default for the classifier
    if zero_init_residual:
        # Goyal et al. 2017: each residual branch starts as identity
        for m in model.modules():
            bn2 = getattr(m, "bn2", None)
            if bn2 is not None and getattr(bn2, "weight", None) is not None:
                nn.init.zeros_(bn2.weight)
