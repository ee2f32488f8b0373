"""Optimizer and LR schedule builders. Schedules step per batch; ReduceLROnPlateau steps per "epoch"."""

from __future__ import annotations

import math

import torch

from bnlab.config_errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "linear", "step", "plateau", "exponential")


def _param_groups(model, weight_decay: float, norm_weight_decay: float | None):
    """Optionally a separate weight decay for 1-d parameters (norm affine, biases)."""
    if norm_weight_decay is None:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": norm_weight_decay},
    ]


def build_optimizer(cfg, model) -> torch.optim.Optimizer:
    name = cfg.get("name")
    groups = _param_groups(model, float(cfg.get("weight_decay", 0.0)), cfg.get("norm_weight_decay"))
    lr = float(cfg.lr)
    if name == "sgd":
        return torch.optim.SGD(
            groups, lr=lr, momentum=float(cfg.get("momentum", 0.9)), nesterov=bool(cfg.get("nesterov", False))
        )
    if name == "adam":
        return torch.optim.Adam(
            groups, lr=lr, betas=tuple(cfg.get("betas", (0.9, 0.999))), eps=float(cfg.get("eps", 1e-8))
        )
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.get("betas", (0.9, 0.999))))
    raise ConfigError("optim.name", f"unknown optimizer {name!r}", allowed=OPTIMIZERS)


class Schedule:
    """One object the loop calls after every batch and after every evaluation; it knows which one matters."""

    def __init__(self, cfg, optimizer, steps_per_epoch: int, epochs: int):
        self.name = cfg.get("name")
        if self.name not in SCHEDULES:
            raise ConfigError("schedule.name", f"unknown schedule {self.name!r}", allowed=SCHEDULES)
        self.optimizer = optimizer
        self.total = max(1, steps_per_epoch * epochs)
        self.warmup = int(round(float(cfg.get("warmup_epochs", 0)) * steps_per_epoch))
        self.plateau = None
        if self.name == "plateau":  # patience counts "epochs" (evaluations), as in the forum thread
            self.monitor = cfg.get("monitor", "val_loss_running")
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer,
                mode="min",
                factor=float(cfg.get("factor", 0.2)),
                patience=int(cfg.get("patience", 30)),
                min_lr=float(cfg.get("min_lr", 0.0)),
            )
            factor = lambda step: 1.0
        else:
            factor = self._factor_fn(cfg, steps_per_epoch)
        self.lambda_lr = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def _factor_fn(self, cfg, steps_per_epoch):
        total, warmup = self.total, self.warmup
        final = float(cfg.get("final_factor", 0.0))

        def warm(step):
            return (step + 1) / warmup if step < warmup else None

        if self.name == "constant":
            return lambda s: warm(s) or 1.0
        if self.name == "cosine":
            return lambda s: (
                warm(s) or final + (1 - final) * 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))
            )
        if self.name == "linear":  # linear warm-up then linear decay (the Myrtle post's schedule)
            return lambda s: warm(s) or final + (1 - final) * max(0.0, 1 - (s - warmup) / max(1, total - warmup))
        if self.name == "step":
            milestones = [int(m * steps_per_epoch) for m in cfg.get("milestones", [])]
            gamma = float(cfg.get("gamma", 0.1))
            return lambda s: warm(s) or gamma ** sum(s >= m for m in milestones)
        if self.name == "exponential":  # LR stress test: lr grows/decays by `gamma` per epoch
            gamma = float(cfg.get("gamma", 1.0))
            return lambda s: gamma ** (s / steps_per_epoch)
        raise AssertionError(self.name)

    def step_batch(self) -> None:
        if self.plateau is None:  # LambdaLR.step() rewrites lr = base_lr * factor: it would undo every reduction
            self.lambda_lr.step()

    def step_epoch(self, metrics: dict) -> None:
        if self.plateau is not None and self.monitor in metrics:
            self.plateau.step(metrics[self.monitor])

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {
            "lambda": self.lambda_lr.state_dict(),
            "plateau": self.plateau.state_dict() if self.plateau else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.lambda_lr.load_state_dict(state["lambda"])
        if self.plateau is not None and state.get("plateau"):
            self.plateau.load_state_dict(state["plateau"])
