"""Losses take (logits, integer labels)."""

from __future__ import annotations

import torch.nn.functional as F

from bnlab.config_errors import ConfigError

LOSSES = ("cross_entropy",)


def build_loss(cfg, num_classes: int):
    name = cfg.get("name")
    if name == "cross_entropy":
        smoothing = float(cfg.get("label_smoothing", 0.0))
        return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=smoothing)
    raise ConfigError("loss.name", f"unknown loss {name!r}", allowed=LOSSES)
