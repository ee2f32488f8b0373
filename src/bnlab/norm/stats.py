"""Per-channel statistics from sums, and normalization with given statistics.

Sync BN, Virtual BN and Precise BN all combine statistics of several pieces of data (ranks, a reference batch,
batches of different sizes). Means and second moments combine exactly when each piece is weighted by its element
count, so they exchange (sum, sum of squares, count) and turn them into mean and variance only at the end:
var = E[x^2] - E[x]^2 (Wu et al. 2021, "Rethinking 'Batch' in BatchNorm", appendix; the all-reduce of E[x] and
E[x^2] in Wu, "Devils in BatchNorm", Sync BN slide).
"""

from __future__ import annotations

import torch
from torch import Tensor

LOW_PRECISION = (torch.float16, torch.bfloat16)


def reduce_dims(x: Tensor) -> list[int]:
    """Every dim except channels (dim 1): batch and spatial."""
    return [0, *range(2, x.dim())]


def channel_sums(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(sum, sum of squares, element count) per channel, in float32 at least (fp16/bf16 inputs are upcast)."""
    xs = x.float() if x.dtype in LOW_PRECISION else x
    dims = reduce_dims(x)
    count = torch.full((), x.numel() // max(x.shape[1], 1), dtype=xs.dtype, device=x.device)
    return xs.sum(dims), (xs * xs).sum(dims), count


def mean_var(total: Tensor, total_sq: Tensor, count: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and biased variance from sums; clamped at 0 since E[x^2] - E[x]^2 can round below it."""
    mean = total / count
    return mean, (total_sq / count - mean * mean).clamp_min(0)


def normalize(x: Tensor, mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """weight * (x - mean) / sqrt(var + eps) + bias, as one per-channel scale and shift (differentiable in all)."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return torch.addcmul(shift.view(shape), x, scale.view(shape)).to(x.dtype)  # one pass over x


@torch.no_grad()
def update_running(running_mean: Tensor, running_var: Tensor, mean: Tensor, var: Tensor, count, factor) -> None:
    """PyTorch's EMA: running = (1 - factor) running + factor batch, with the unbiased batch variance."""
    n = torch.as_tensor(count, dtype=var.dtype, device=var.device)  # a tensor: no host sync on GPU
    unbiased = var * n / (n - 1).clamp_min(1)
    running_mean.lerp_(mean.to(running_mean.dtype), factor)
    running_var.lerp_(unbiased.to(running_var.dtype), factor)
