"""Per-channel statistics of several pieces of data, combined, and BN with the combined statistics.

Sync BN and Virtual BN normalize a batch with statistics that other data shares (the other ranks' batches, a
reference batch); Precise BN aggregates statistics over many batches. Two representations:

- moments (count, mean, biased variance) per piece, combined with Chan et al.'s parallel formula (1979, "Updating
  formulae and a pairwise algorithm for computing sample variances"): N = sum n_i, mean = sum n_i mean_i / N,
  var = sum n_i (var_i + (mean_i - mean)^2) / N. What Sync BN and Virtual BN exchange (as PyTorch's own
  SyncBatchNorm gathers per-rank mean and invstd). Stable in float32: every term is non-negative.
- sums (sum, sum of squares, count), var = E[x^2] - E[x]^2 (Wu et al. 2021, "Rethinking 'Batch' in BatchNorm",
  appendix; the all-reduce of E[x] and E[x^2] in Wu, "Devils in BatchNorm", Sync BN slide). Accurate in float64,
  which is how Precise BN accumulates them; in float32 the subtraction cancels, an error that grows as
  (mean / std)^2: relative error 5e-4 in the variance of a channel whose mean is 25x its std, 1e-2 at 250x
  (tests/test_norm_sync.py). On PyTorch's fused kernels, a Sync BN fed with float32 sums landed 5.5e-5 from one
  process after one 2-process training step (tests/test_distributed.py); fed with moments it lands 2e-6.

`batch_norm_with_moments` is the fast path Sync and Virtual BN share: local statistics from PyTorch's fused
kernel, the output from its eval-mode batch-norm kernel (one pass), the backward from its training-mode
batch-norm backward (one fused kernel), corrected by one per-channel affine pass only when other data shares
the statistics. No autograd graph of elementwise ops.
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


@torch.no_grad()
def update_running(running_mean: Tensor, running_var: Tensor, mean: Tensor, var: Tensor, count, factor) -> None:
    """PyTorch's EMA: running = (1 - factor) running + factor batch, with the unbiased batch variance."""
    n = torch.as_tensor(count, dtype=var.dtype, device=var.device)  # a tensor: no host sync on GPU
    unbiased = var * n / (n - 1).clamp_min(1)
    running_mean.lerp_(mean.to(running_mean.dtype), factor)
    running_var.lerp_(unbiased.to(running_var.dtype), factor)


def local_moments(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(count, mean, biased variance) per channel from PyTorch's fused statistics kernel, in float32 at least."""
    xs = x.float() if x.dtype in LOW_PRECISION else x
    mean, var = torch.batch_norm_update_stats(xs, None, None, 0.0)  # biased variance
    count = torch.full((), x.numel() // max(x.shape[1], 1), dtype=mean.dtype, device=x.device)
    return count, mean, var


def combine_moments(counts: Tensor, means: Tensor, variances: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Chan et al.'s parallel formula over pieces: counts (k,), means and variances (k, C) -> (N, mean, var)."""
    total = counts.sum()
    w = (counts / total).unsqueeze(1)
    mean = (w * means).sum(0)
    var = (w * (variances + (means - mean) ** 2)).sum(0)
    return total, mean, var


def _gather_moments(count: Tensor, mean: Tensor, var: Tensor, group) -> tuple[Tensor, Tensor, Tensor]:
    """Every rank's (count, mean, var) of `group` in one all-gather: (world,), (world, C), (world, C)."""
    c = mean.shape[0]
    packed = torch.cat([count.view(1), mean, var])
    parts = [torch.empty_like(packed) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, packed, group=group)
    stacked = torch.stack(parts)
    return stacked[:, 0], stacked[:, 1 : c + 1], stacked[:, c + 1 :]


def _all_reduce(t: Tensor, group) -> Tensor:
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


class _BatchNormWithMoments(torch.autograd.Function):
    """BN of x with the statistics of x's moments combined with constant `extra` moments and with the moments of
    the other ranks of `group`.

    Backward (Ioffe & Szegedy 2015, sec. 3, with N the total count and sums over every sample with a gradient,
    i.e. over all ranks): dx = w * invstd * (dy - sum(dy) / N - x_hat * sum(dy * x_hat) / N). PyTorch's
    training-mode backward computes it with the local count n and local sums in one kernel; the difference is a
    per-channel affine function of x, added in one more pass when N != n or ranks share the statistics.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, extra, group, eps):
        n_local, mean, var = local_moments(x)
        distributed = group is not None and dist.get_world_size(group) > 1
        count = n_local
        if distributed or extra is not None:
            counts, means, variances = (
                _gather_moments(n_local, mean, var, group) if distributed else (n_local.view(1), mean[None], var[None])
            )
            if extra is not None:
                counts = torch.cat([counts, extra[0].view(1)])
                means, variances = torch.cat([means, extra[1][None]]), torch.cat([variances, extra[2][None]])
            count, mean, var = combine_moments(counts, means, variances)
        w = weight if weight is not None else torch.ones_like(mean)
        # the eval-mode kernel normalizes with given statistics: one fused pass (mixed bf16/fp32 on CPU and CUDA)
        y = torch.native_batch_norm(x, w, bias, mean, var, False, 0.0, eps)[0]
        ctx.save_for_backward(x, w, mean, torch.rsqrt(var + eps), count, n_local)
        ctx.group, ctx.eps, ctx.has_weight = group, eps, weight is not None
        ctx.shared, ctx.distributed = distributed or extra is not None, distributed
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
            c = x.shape[1]
            packed = torch.cat([grad_b, grad_w])
            packed = _all_reduce(packed, ctx.group) if ctx.distributed else packed
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


def batch_norm_with_moments(x, weight, bias, running_mean, running_var, factor, eps, extra=None, group=None):
    """BN with statistics over x plus constant `extra` moments (count, mean, biased var) and over the ranks of
    `group` (Sync BN); moves the running buffers, if given, toward the combined mean and unbiased variance."""
    y, mean, var, count = _BatchNormWithMoments.apply(x, weight, bias, extra, group, eps)
    if running_mean is not None:
        update_running(running_mean, running_var, mean, var, count, factor)
    return y
