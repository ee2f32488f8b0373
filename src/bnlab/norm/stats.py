"""Per-channel statistics from sums, and normalization with given statistics.

Sync BN, Virtual BN and Precise BN all combine statistics of several pieces of data (ranks, a reference batch,
batches of different sizes). Means and second moments combine exactly when each piece is weighted by its element
count, so they exchange (sum, sum of squares, count) and turn them into mean and variance only at the end:
var = E[x^2] - E[x]^2 (Wu et al. 2021, "Rethinking 'Batch' in BatchNorm", appendix; the all-reduce of E[x] and
E[x^2] in Wu, "Devils in BatchNorm", Sync BN slide).

`batch_norm_with_sums` is the fast path they share: statistics from PyTorch's own fused kernels, the output from
its eval-mode batch-norm kernel (one pass) and the backward from its training-mode batch-norm backward (one fused
kernel), corrected by one per-channel affine pass only when other data (ranks, a reference batch) shares the
statistics. No autograd graph of elementwise ops: within 1.5x of nn.BatchNorm2d instead of 2.5x.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import once_differentiable

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


def local_sums(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """`channel_sums` from PyTorch's fused statistics kernel (one pass, no x * x temporary)."""
    xs = x.float() if x.dtype in LOW_PRECISION else x
    mean, var = torch.batch_norm_update_stats(xs, None, None, 0.0)  # biased variance
    n = x.numel() // max(x.shape[1], 1)
    count = torch.full((), n, dtype=mean.dtype, device=x.device)
    return mean * n, (var + mean * mean) * n, count


def _all_reduce(t: Tensor, group) -> Tensor:
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


class _BatchNormWithSums(torch.autograd.Function):
    """BN of x with statistics of (x's sums + constant extra sums), summed over the ranks of `group`.

    Backward (Ioffe & Szegedy 2015, sec. 3, with N the total count and sums over every sample with a gradient,
    i.e. over all ranks): dx = w * invstd * (dy - sum(dy) / N - x_hat * sum(dy * x_hat) / N). PyTorch's
    training-mode backward computes it with the local count n and local sums in one kernel; the difference is a
    per-channel affine function of x, added in one more pass when N != n or ranks share the statistics.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, extra, group, eps):
        total, total_sq, count = local_sums(x)
        n_local = count.clone()
        if extra is not None:
            total, total_sq, count = total + extra[0], total_sq + extra[1], count + extra[2]
        shared = extra is not None or (group is not None and dist.get_world_size(group) > 1)
        if group is not None and dist.get_world_size(group) > 1:
            c = x.shape[1]
            packed = _all_reduce(torch.cat([total, total_sq, count.view(1)]), group)  # one collective
            total, total_sq, count = packed[:c], packed[c : 2 * c], packed[2 * c]
        mean, var = mean_var(total, total_sq, count)
        w = weight if weight is not None else torch.ones_like(mean)
        # the eval-mode kernel normalizes with given statistics: one fused pass (mixed bf16/fp32 on CPU and CUDA)
        y = torch.native_batch_norm(x, w, bias, mean, var, False, 0.0, eps)[0]
        ctx.save_for_backward(x, w, mean, torch.rsqrt(var + eps), count, n_local)
        ctx.group, ctx.eps, ctx.shared, ctx.has_weight = group, eps, shared, weight is not None
        ctx.mark_non_differentiable(mean, var, count)
        return y, mean, var, count

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, _gm, _gv, _gc):
        x, w, mean, invstd, count, n_local = ctx.saved_tensors
        need = ctx.needs_input_grad
        grad_x, grad_w, grad_b = torch.ops.aten.native_batch_norm_backward(
            grad_out, x, w, None, None, mean, invstd, True, ctx.eps, [need[0], True, True]
        )
        if need[0] and ctx.shared:
            # grad_w = sum(dy * x_hat), grad_b = sum(dy), both local; the true gradient uses the global sums
            packed = _all_reduce(torch.cat([grad_b, grad_w]), ctx.group)
            c = x.shape[1]
            sum_dy, sum_dy_xhat = packed[:c], packed[c:]
            k = w * invstd
            a = k * (grad_b / n_local - sum_dy / count)
            b = k * invstd * (grad_w / n_local - sum_dy_xhat / count)
            shape = (1, -1) + (1,) * (x.dim() - 2)
            dt = grad_x.dtype
            grad_x = grad_x.addcmul_(x, b.to(dt).view(shape)).add_((a - b * mean).to(dt).view(shape))
        if not ctx.has_weight:
            return grad_x, None, None, None, None, None
        grad_w = grad_w.to(w.dtype) if need[1] else None
        grad_b = grad_b.to(w.dtype) if need[2] else None
        return grad_x, grad_w, grad_b, None, None, None


def batch_norm_with_sums(x, weight, bias, running_mean, running_var, factor, eps, extra=None, group=None) -> Tensor:
    """BN with statistics over x plus constant `extra` sums (sum, sum of squares, count) and over the ranks of
    `group` (Sync BN); moves the running buffers, if given, toward the combined mean and unbiased variance."""
    y, mean, var, count = _BatchNormWithSums.apply(x, weight, bias, extra, group, eps)
    if running_mean is not None:
        update_running(running_mean, running_var, mean, var, count, factor)
    return y
