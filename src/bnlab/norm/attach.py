"""Give norm layers the data they need beyond their input: per-sample domain ids (Separate BN) and whatever the
configured layer attaches itself (Virtual BN's fixed reference batch, norm/virtual.py). Both enter through hooks
on the model, so models keep a one-input forward and the training loop only ever calls `model(x, *extra)` with
whatever the data loader yields beside (x, y).
"""

from __future__ import annotations

from torch import nn

from bnlab.norm.layer import layer_class
from bnlab.norm.separate import route_domains


def attach_norm_inputs(model: nn.Module, cfg, data) -> nn.Module:
    """Hooks for `cfg.norm` on `model` built for `data`; returns the model (same object)."""
    layer_class(cfg.norm.name).attach(model, cfg, data)  # first: a reference pass runs before the ids are routed
    return route_domains(model)
