"""Give norm layers the data they need beyond their input: per-sample domain ids (Separate BN) and the fixed
reference batch of Virtual BN. Both enter through hooks on the model, so models keep a one-input forward and the
training loop only ever calls `model(x, *extra)` with whatever the data loader yields beside (x, y).
"""

from __future__ import annotations

import torch
from torch import nn

from bnlab.config_errors import ConfigError
from bnlab.norm.separate import route_domains
from bnlab.norm.virtual import attach_reference_batch


def reference_batch(loader, size: int, seed: int) -> torch.Tensor:
    """A fixed batch of `size` training images (seeded by data.split_seed, the same for every run seed), as the
    loader preprocesses them without augmentation (Salimans et al. 2016, sec. 3.4: chosen once, at the start)."""
    images = getattr(loader, "images", None)
    if images is None:
        raise ConfigError("norm.name", "virtual BN needs an in-memory dataset (fashion_mnist, cifar*, synthetic)")
    if size > len(images):
        raise ConfigError("norm.reference_size", f"{size} exceeds the {len(images)} training images")
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:size]
    return loader.transform(images[idx.to(images.device)])


def attach_norm_inputs(model: nn.Module, cfg, data) -> nn.Module:
    """Hooks for `cfg.norm` on `model` built for `data`; returns the model (same object)."""
    if cfg.norm.get("name") == "virtual":  # registered first: its reference pass runs before the ids are routed
        size, seed = int(cfg.norm.reference_size), int(cfg.data.get("split_seed", 0))
        attach_reference_batch(model, reference_batch(data.train, size, seed))
    return route_domains(model)
