"""Batch Renormalization (Ioffe 2017, arXiv:1702.03275, Algorithm 1).

Training output, per channel, with batch statistics mu_B, sigma_B = sqrt(var_B + eps) and running mu, sigma:

    x_hat = (x - mu_B) / sigma_B * r + d,   y = gamma * x_hat + beta
    r = stop_gradient(clip(sigma_B / sigma, 1 / r_max, r_max))
    d = stop_gradient(clip((mu_B - mu) / sigma, -d_max, d_max))
    mu += alpha * (mu_B - mu),   sigma += alpha * (sigma_B - sigma)

and inference uses mu, sigma. Since r and d are constants for the gradient, y is BN with weight gamma * r and
bias beta + gamma * d, so the backward is PyTorch's own batch-norm backward with that weight: one fused kernel,
no autograd graph of elementwise ops; Ghost groups (micro-batches) loop those kernels over slices. Schedule
(sec. 4): r_max = 1, d_max = 0 (plain BN) for the first steps, then relaxed linearly (the paper: r_max 1 -> 3
by 40k steps, d_max 0 -> 5 by 25k steps, after 5k steps).

The schedule is about the running averages, so its natural unit is the EMA time constant 1 / alpha steps: at the
paper's alpha = 0.01 the warm-up is 50 time constants, d_max opens fully at 250 and r_max at 400 (of a ~1300-long
run). `schedule_steps` converts a schedule given in time constants (config `norm.schedule_unit: ema_tau`) to steps.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

import bnlab.norm.validate as check
from bnlab.config_errors import ConfigError
from bnlab.norm.ghost import (
    from_ghost_channels,
    ghost_groups,
    group_batch_norm_backward,
    group_batch_norm_forward,
    group_view,
    to_ghost_channels,
    use_channels_trick,
)
from bnlab.norm.layer import NormLayer, momentum_problem


def ramp(step: Tensor, start: int, end: int, initial: float, final: float) -> Tensor:
    """`initial` before `start`, linear to `final` at `end`, `final` after (a tensor: no host sync on GPU)."""
    step = step.to(torch.float64)
    if end <= start:
        return torch.where(step >= start, final, initial)
    frac = ((step - start) / (end - start)).clamp(0.0, 1.0)
    return initial + (final - initial) * frac


SCHEDULE_UNITS = ("steps", "ema_tau")


def schedule_steps(value: float, unit: str, momentum: float) -> int:
    """A schedule point in `unit` as a step count: steps as given, ema_tau = value EMA time constants (1/alpha)."""
    if unit == "steps":
        return int(value)
    if unit == "ema_tau":
        return round(value / momentum)
    raise ValueError(f"schedule unit must be one of {SCHEDULE_UNITS}, got {unit!r}")


class _BatchRenorm(torch.autograd.Function):
    """y = (weight * r) * (x - mu_B) / sigma_B + (bias + weight * d) with r, d computed and detached inside, per
    Ghost group (groups=1: the whole batch). Each group is one call of PyTorch's fused batch-norm kernels on a
    slice of the batch (bnlab.norm.ghost), forward and backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_sigma, r_max, d_max, eps, groups, layout):
        out, mean, invstd = group_batch_norm_forward(x, None, None, None, None, 0.0, eps, groups, layout)
        sigma = invstd.reciprocal()  # (G, C): sigma_B = sqrt(var_B + eps), var_B biased (Algorithm 1)
        r = (sigma / running_sigma).clamp(min=1.0 / r_max, max=r_max).to(mean.dtype)
        d = ((mean - running_mean) / running_sigma).clamp(min=-d_max, max=d_max).to(mean.dtype)
        scale, shift = r, d
        if weight is not None:
            scale, shift = weight * r, weight * d + bias
        view, shape = group_view(out, groups, layout)  # in place, one pass: the backward needs x only
        torch.addcmul(shift.view(shape), view, scale.view(shape), out=view)
        ctx.save_for_backward(x, weight, mean, invstd, r, d)
        ctx.eps, ctx.groups, ctx.layout = eps, groups, layout
        ctx.mark_non_differentiable(mean, sigma)
        return out, mean, sigma

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, _grad_mean, _grad_sigma):
        x, weight, mean, invstd, r, d = ctx.saved_tensors
        effective_weight = r if weight is None else weight * r  # (G, C)
        need_affine = weight is not None and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2])
        mask = [ctx.needs_input_grad[0], need_affine, need_affine]
        grad_x, grad_w, grad_b = group_batch_norm_backward(
            grad_out, x, effective_weight, mean, invstd, ctx.eps, ctx.groups, ctx.layout, mask
        )
        grad_weight = grad_bias = None
        if need_affine:  # dy/dgamma = r * x_hat_BN + d, dy/dbeta = 1, summed over groups
            grad_weight = (r * grad_w + d * grad_b).sum(0).to(weight.dtype)
            grad_bias = grad_b.sum(0).to(weight.dtype)
        return grad_x, grad_weight, grad_bias, None, None, None, None, None, None, None


class BatchRenorm2d(nn.BatchNorm2d, NormLayer, config_name="renorm"):
    """Batch Renormalization, a drop-in nn.BatchNorm2d (same buffers and state_dict keys).

    Args:
        num_features, eps: as nn.BatchNorm2d.
        momentum: alpha of Algorithm 1, the weight of the new batch in the running mean and running sigma
            (EMA decay 1 - alpha; the paper's alpha = 0.01).
        r_max, d_max: final clipping limits of r and d.
        warmup_steps: r_max = 1 and d_max = 0 (exactly BN in training) for steps < warmup_steps.
        r_max_full_at, d_max_full_at: steps at which the linear ramps reach r_max and d_max. Setting
            warmup_steps, r_max_full_at and d_max_full_at to 0 gives constant limits.
        nbs, ghost_layout: as bnlab BatchNorm2d's Ghost BN (each group gets its own r, d; the running statistics
            move toward the group average), e.g. the paper's micro-batches of 4 (sec. 4.2). No Sync BN.

    The step is `num_batches_tracked` before this step's increment (0 on the first training batch). The paper
    keeps sigma; it is stored as ``running_var = sigma^2 - eps`` so that eval mode is nn.BatchNorm2d's own
    ``(x - mu) / sqrt(running_var + eps)`` and state_dicts load into either class.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.01,
        *,
        r_max: float = 3.0,
        d_max: float = 5.0,
        warmup_steps: int = 5000,
        r_max_full_at: int = 40000,
        d_max_full_at: int = 25000,
        nbs: int | None = None,
        ghost_layout: str = "contiguous",
        affine: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__(num_features, eps, momentum, affine, track_running_stats=True, device=device, dtype=dtype)
        if momentum_problem(momentum):
            raise ValueError(f"momentum (alpha) {momentum_problem(momentum)}")
        if r_max < 1 or d_max < 0:
            raise ValueError(f"need r_max >= 1 and d_max >= 0, got r_max={r_max}, d_max={d_max}")
        if min(warmup_steps, r_max_full_at, d_max_full_at) < 0:
            raise ValueError("warmup_steps, r_max_full_at and d_max_full_at must be >= 0")
        self.r_max, self.d_max = float(r_max), float(d_max)
        self.warmup_steps, self.r_max_full_at, self.d_max_full_at = warmup_steps, r_max_full_at, d_max_full_at
        self.nbs, self.ghost_layout = nbs, ghost_layout

    # --- what bnlab asks of a norm layer (norm/layer.py) ---
    is_batchnorm = has_running_stats = True

    @classmethod
    def from_config(cls, num_features: int, eps: float, momentum: float, r_max: float, d_max: float,
                    warmup_steps: float, r_max_full_at: float, d_max_full_at: float, nbs=None,
                    ghost_layout: str = "contiguous", schedule_unit: str = "steps", device=None,
                    dtype=None) -> BatchRenorm2d:  # fmt: skip
        """The YAML's keys: schedule points in steps, or in EMA time constants 1/momentum (schedule_unit)."""
        points = dict(warmup_steps=warmup_steps, r_max_full_at=r_max_full_at, d_max_full_at=d_max_full_at)
        at = {k: schedule_steps(v, schedule_unit, momentum) for k, v in points.items()}
        return cls(num_features, eps, momentum, r_max=r_max, d_max=d_max, nbs=nbs, ghost_layout=ghost_layout,
                   device=device, dtype=dtype, **at)  # fmt: skip

    @classmethod
    def check_config(cls, cfg) -> None:
        norm = cfg.norm
        check.check_nbs(cfg, sync=False)
        if "momentum" in norm:
            check.momentum(norm)
        check.number(norm, "r_max", 1)
        check.number(norm, "d_max", 0)
        check.one_of(norm, "schedule_unit", SCHEDULE_UNITS)
        unit = norm.schedule_unit
        for key in ("warmup_steps", "r_max_full_at", "d_max_full_at"):
            v = norm.get(key)
            # in steps an integer; in EMA time constants any number (rounded to steps by from_config)
            ok = check.is_int(v) if unit == "steps" else isinstance(v, int | float) and not isinstance(v, bool)
            if not ok or v < 0:
                kind = "an integer" if unit == "steps" else "a number"
                raise ConfigError(f"norm.{key}", f"must be {kind} >= 0 (schedule_unit={unit}), got {v!r}")

    @contextmanager
    def batch_statistics(self):
        """Ioffe 2017, Algorithm 1 with r_max = 1, d_max = 0 is BN: both ramps become constant, r = 1, d = 0."""
        saved = self.r_max, self.d_max
        self.r_max, self.d_max = 1.0, 0.0
        try:
            yield
        finally:
            self.r_max, self.d_max = saved

    def why_not_stackable(self) -> str | None:
        return "Batch Renorm's fused kernels are a torch.autograd.Function without a vmap rule"

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, r_max={self.r_max}, d_max={self.d_max}, warmup_steps={self.warmup_steps}, "
            f"r_max_full_at={self.r_max_full_at}, d_max_full_at={self.d_max_full_at}, nbs={self.nbs}"
        )

    def limits(self, step: Tensor | int | None = None) -> tuple[Tensor, Tensor]:
        """(r_max, d_max) at `step` (default: the current step, num_batches_tracked)."""
        step = self.num_batches_tracked if step is None else torch.as_tensor(step)
        r = ramp(step, self.warmup_steps, self.r_max_full_at, 1.0, self.r_max)
        d = ramp(step, self.warmup_steps, self.d_max_full_at, 0.0, self.d_max)
        return r, d

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        if not self.training:
            return nn.functional.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        if self.nbs is not None and self.nbs > x.shape[0]:
            raise ValueError(f"BatchRenorm2d: nbs={self.nbs} is larger than the batch {x.shape[0]} (no Sync BRN)")
        c, groups = x.shape[1], ghost_groups(self.nbs, x.shape[0])
        r_max, d_max = (t.to(device=x.device, dtype=self.running_mean.dtype) for t in self.limits())
        sigma = (self.running_var + self.eps).sqrt()
        w, b, mu, sd = self.weight, self.bias, self.running_mean, sigma
        xg, calls, layout = x, groups, self.ghost_layout
        if groups > 1 and use_channels_trick(x, layout, groups):  # one call over G * C channels
            xg, calls = to_ghost_channels(x, groups, layout), 1
            w, b = (t.repeat(groups) if t is not None else None for t in (w, b))
            mu, sd = mu.repeat(groups), sd.repeat(groups)
        y, mean_b, sigma_b = _BatchRenorm.apply(xg, w, b, mu, sd, r_max, d_max, self.eps, calls, layout)
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            # Algorithm 1's updates, of the mean and of sigma (not of the variance)
            self.running_mean.lerp_(mean_b.view(groups, c).mean(0).to(mu.dtype), self.momentum)
            sigma = sigma.lerp(sigma_b.view(groups, c).mean(0).to(sigma.dtype), self.momentum)
            self.running_var.copy_(sigma * sigma - self.eps)
        if xg is not x:
            y = from_ghost_channels(y, groups, layout, x)
        return y
