"""`build(cfg, device)`: what one run trains, from its config (as pycls's core/builders.py).

Data, model (with its norm layers), optimizer, LR schedule and loss, in this order (the order draws from the
seeded RNG, so it is part of a run's reproducibility). The training loop, `bnlab health` and tests share it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from bnlab.config_errors import ConfigError
from bnlab.data import DataBundle, build_data
from bnlab.models import build_model
from bnlab.norm import attach_norm_inputs, build_norm
from bnlab.norm.validate import check_val_size
from bnlab.train.accumulate import optimizer_steps
from bnlab.train.fast import grad_scaler
from bnlab.train.finetune import prepare_finetune
from bnlab.train.losses import build_loss
from bnlab.train.optim import Schedule, build_optimizer


@dataclass
class Built:
    data: DataBundle
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    loss_fn: Callable
    finetuned: dict | None = None  # where a fine-tuning run started from (train/finetune.py)
    scaler: torch.amp.GradScaler | None = None  # fp16 autocast's loss scale: checkpointed, so a resume is exact


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", f"{name!r} requested but CUDA is not available here", allowed=("auto", "cpu"))
    return name


def build(cfg, device: str = "cpu") -> Built:
    data = build_data(cfg, device)
    check_val_size(cfg, data.info.get("n_val"))  # Ghost groups of the last validation batch, now its size is known
    model = build_model(cfg.model, build_norm(cfg.norm), data.in_channels, data.num_classes).to(device)
    attach_norm_inputs(model, cfg, data)  # domain ids, Virtual BN's reference batch -> norm layers (norm/attach.py)
    finetuned = prepare_finetune(model, cfg, data)  # before the optimizer: Frozen BN replaces parameters
    optimizer = build_optimizer(cfg.optim, model)
    steps = optimizer_steps(len(data.train), int(cfg.train.get("accumulate", 1)))  # train.accumulate micro-batches
    schedule = Schedule(cfg.schedule, optimizer, steps, int(cfg.train.epochs))
    loss_fn = build_loss(cfg.loss, data.num_classes)
    return Built(data, model, optimizer, schedule, loss_fn, finetuned, grad_scaler(cfg.train, device))
