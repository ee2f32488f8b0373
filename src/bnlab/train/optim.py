"""Optimizer and LR schedule builders. Schedules step per batch; ReduceLROnPlateau steps per "epoch"."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bnlab.config_errors import ConfigError
from bnlab.registry import Registry

# an optimizer gets the model (for its parameter groups) and its conf/optim/<name>.yaml keys
OPTIMIZERS = Registry("optim", runtime=("model",))
# a schedule gets the run's length and its conf/schedule/<name>.yaml keys; it returns the LR factor per batch step
# (step -> multiplier of optim.lr), or a Plateau to step on an evaluated metric
SCHEDULES = Registry("schedule", runtime=("steps_per_epoch", "epochs"))


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


@OPTIMIZERS.register("sgd")
def sgd(model, lr: float, momentum: float, nesterov: bool, weight_decay: float, norm_weight_decay: float | None):
    groups = _param_groups(model, float(weight_decay), norm_weight_decay)
    return torch.optim.SGD(groups, lr=float(lr), momentum=float(momentum), nesterov=bool(nesterov))


@OPTIMIZERS.register("adam")
def adam(model, lr: float, betas, eps: float, weight_decay: float, norm_weight_decay: float | None):
    groups = _param_groups(model, float(weight_decay), norm_weight_decay)
    return torch.optim.Adam(groups, lr=float(lr), betas=tuple(betas), eps=float(eps))


@OPTIMIZERS.register("adamw")
def adamw(model, lr: float, betas, eps: float, weight_decay: float, norm_weight_decay: float | None):
    groups = _param_groups(model, float(weight_decay), norm_weight_decay)  # decoupled decay (Loshchilov & Hutter)
    return torch.optim.AdamW(groups, lr=float(lr), betas=tuple(betas), eps=float(eps))


def build_optimizer(cfg, model) -> torch.optim.Optimizer:
    return OPTIMIZERS.build(cfg, model=model)


def _warmup(warmup_epochs: float, steps_per_epoch: int) -> int:
    return int(round(float(warmup_epochs) * steps_per_epoch))


def _warm(step: int, warmup: int) -> float | None:
    """Linear warm-up factor during the first `warmup` steps, None after."""
    return (step + 1) / warmup if step < warmup else None


@SCHEDULES.register("constant")
def constant(steps_per_epoch: int, epochs: int, warmup_epochs: float):
    warmup = _warmup(warmup_epochs, steps_per_epoch)
    return lambda s: _warm(s, warmup) or 1.0


@SCHEDULES.register("cosine")
def cosine(steps_per_epoch: int, epochs: int, warmup_epochs: float, final_factor: float):
    total, warmup, final = max(1, steps_per_epoch * epochs), _warmup(warmup_epochs, steps_per_epoch), final_factor
    return lambda s: (
        _warm(s, warmup) or final + (1 - final) * 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))
    )


@SCHEDULES.register("linear")
def linear(steps_per_epoch: int, epochs: int, warmup_epochs: float, final_factor: float):
    # linear warm-up then linear decay (the Myrtle post's schedule)
    total, warmup, final = max(1, steps_per_epoch * epochs), _warmup(warmup_epochs, steps_per_epoch), final_factor
    return lambda s: _warm(s, warmup) or final + (1 - final) * max(0.0, 1 - (s - warmup) / max(1, total - warmup))


@SCHEDULES.register("step")
def step(steps_per_epoch: int, epochs: int, warmup_epochs: float, milestones, gamma: float):
    warmup = _warmup(warmup_epochs, steps_per_epoch)
    steps = [int(m * steps_per_epoch) for m in milestones]
    return lambda s: _warm(s, warmup) or float(gamma) ** sum(s >= m for m in steps)


@SCHEDULES.register("exponential")
def exponential(steps_per_epoch: int, epochs: int, gamma: float):
    # LR stress test: lr grows/decays by `gamma` per epoch
    return lambda s: float(gamma) ** (s / steps_per_epoch)


@dataclass(frozen=True)
class AbsoluteLR:
    lr: object  # step -> learning rate itself (optim.lr is not used)


@SCHEDULES.register("lr_range")
def lr_range(steps_per_epoch: int, epochs: int, start_lr: float, end_lr: float) -> AbsoluteLR:
    """LR range test (Myrtle "How to train your ResNet 7", first figure): lr grows geometrically from start_lr at
    the first step to end_lr at the last."""
    for key, v in (("start_lr", start_lr), ("end_lr", end_lr)):
        if not isinstance(v, int | float) or isinstance(v, bool) or v <= 0:
            raise ConfigError(f"schedule.{key}", f"must be a positive number, got {v!r}")
    total, ratio = max(1, steps_per_epoch * epochs), math.log(end_lr / start_lr)
    return AbsoluteLR(lambda s: start_lr * math.exp(ratio * min(s, total - 1) / max(1, total - 1)))


@dataclass(frozen=True)
class Plateau:
    monitor: str
    factor: float
    patience: int
    min_lr: float


@SCHEDULES.register("plateau")
def plateau(steps_per_epoch: int, epochs: int, monitor: str, factor: float, patience: int, min_lr: float) -> Plateau:
    # patience counts "epochs" (evaluations), as in the forum thread
    return Plateau(str(monitor), float(factor), int(patience), float(min_lr))


class Schedule:
    """One object the loop calls after every batch and after every evaluation; it knows which one matters."""

    def __init__(self, cfg, optimizer, steps_per_epoch: int, epochs: int):
        self.name = cfg.get("name")
        self.optimizer = optimizer
        length = cfg.get("length_epochs")  # a schedule longer than the run stops part-way (Myrtle: 10 of 20 epochs)
        if length is not None and (not isinstance(length, int | float) or length < epochs):
            raise ConfigError("schedule.length_epochs", f"must be null or >= train.epochs={epochs}, got {length!r}")
        shape = SCHEDULES.build(
            cfg, shared=("length_epochs",), steps_per_epoch=steps_per_epoch, epochs=length or epochs
        )
        self.plateau = None
        if isinstance(shape, Plateau):
            self.monitor = shape.monitor
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=shape.factor, patience=shape.patience, min_lr=shape.min_lr
            )
            shape = lambda step: 1.0
        elif isinstance(shape, AbsoluteLR):  # lr values, not factors: divide by optim.lr, which LambdaLR multiplies
            base, absolute = optimizer.defaults["lr"], shape.lr
            shape = lambda step: absolute(step) / base
        self.lambda_lr = torch.optim.lr_scheduler.LambdaLR(optimizer, shape)

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
