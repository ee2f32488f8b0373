"""Ghost BN kernels: normalize each group of ``nbs`` samples of a batch with that group's own statistics.

Hoffer et al. 2017 ("Train longer, generalize better", sec. 4): the batch of B samples is split into G = B / nbs
groups. Two layouts put sample i in group i // nbs ("contiguous", the default, what non-i.i.d. studies need) or in
group i % G ("strided", Keras' virtual_batch_size). Two implementations, picked per layout and memory format by
measurement (scripts/bench.py, results/bench/norm_cpu.csv; `use_channels_trick` decides):

- channels trick (cifar10-fast's GhostBatchNorm): view the batch as (nbs, G * C, H, W) and make ONE batch-norm
  call. A free view only for the strided layout of a contiguous tensor; any other case needs a transposed copy in
  and out (forward and backward), which made Ghost BN 2-4x nn.BatchNorm2d.
- group loop (this file's `GhostBatchNormFn`): the samples of one group are one dense slice of the batch in the
  contiguous layout (both memory formats), so G calls of PyTorch's own fused batch-norm kernels write straight
  into slices of one output (forward) and of one input gradient (backward, `native_batch_norm_backward.out`):
  no copy of the batch, no autograd graph of elementwise ops, the numerics of a loop of nn.BatchNorm2d over the
  groups. Its cost is a fixed overhead per group (a few kernel calls), so it wins when groups are large.

`use_channels_trick` picks by the size of one group (LOOP_MIN_GROUP_NUMEL), measured on the quiet 2-core machine
with 1 and 2 threads (results/bench/README.md): with groups of >= 32k elements the loop is 1.0-1.3x
nn.BatchNorm2d and the trick 2-3.5x; with smaller groups (e.g. nbs = 2 on the 8-32 channel, 7-28 px activations
of the CPU preset) the per-group overhead dominates and the trick's one call wins (1.7-2.8x against the loop's
2-8x).

Running statistics: every group updates its own copy of the running buffers (a (G, C) tensor, a row per group)
and the copies are averaged, i.e. the EMA moves toward the average over groups of each group's mean and unbiased
variance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

GHOST_LAYOUTS = ("contiguous", "strided")

_BN_FORWARD_OUT = torch.ops.aten.native_batch_norm.out
_BN_BACKWARD = torch.ops.aten.native_batch_norm_backward.default
_BN_BACKWARD_OUT = torch.ops.aten.native_batch_norm_backward.out


def splits(nbs: int, samples: int) -> bool:
    """The Ghost BN rule: `samples` (a batch, or the short last batch of an epoch) cut into groups of exactly nbs
    samples. Every check of nbs against a batch size asks this (config checks: norm/validate.py)."""
    return samples % nbs == 0


def ghost_groups(nbs: int | None, batch_size: int) -> int:
    """Number of ghost groups for a batch (1 = plain BN); a clear error when nbs does not divide the batch."""
    if nbs is None or nbs >= batch_size:
        return 1
    if not splits(nbs, batch_size):
        raise ValueError(f"nbs={nbs} does not divide the batch size {batch_size}: Ghost BN needs equal groups")
    return batch_size // nbs


def to_ghost_channels(x: Tensor, groups: int, layout: str) -> Tensor:
    """(B, C, *) -> (B / groups, groups * C, *): channel g * C + c holds channel c of the samples of group g.

    "strided" puts sample i in group i % groups: a free view of a contiguous tensor. "contiguous" puts samples
    [g * nbs, (g + 1) * nbs) in group g, which needs a transposed copy.
    """
    b, c, *rest = x.shape
    nbs = b // groups
    if layout == "strided":
        return x.reshape(nbs, groups * c, *rest)
    return x.reshape(groups, nbs, c, *rest).transpose(0, 1).reshape(nbs, groups * c, *rest)


def from_ghost_channels(y: Tensor, groups: int, layout: str, like: Tensor) -> Tensor:
    """Inverse of `to_ghost_channels`, in the memory format of `like` (the layer's input), as nn.BatchNorm2d."""
    b, c, *rest = like.shape
    if layout == "strided":
        y = y.reshape(like.shape)
    else:
        y = y.reshape(b // groups, groups, c, *rest).transpose(0, 1).reshape(like.shape)
    if is_channels_last(like) and not like.is_contiguous():
        y = y.contiguous(memory_format=torch.channels_last)
    return y


def is_channels_last(x: Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)


def memory_format(x: Tensor) -> torch.memory_format:
    """channels_last for a channels_last (and not also contiguous) 4-D tensor, else contiguous_format."""
    return torch.channels_last if is_channels_last(x) and not x.is_contiguous() else torch.contiguous_format


def group_slices(x: Tensor, groups: int, layout: str) -> list[Tensor]:
    """The samples of each group as views of `x`: dense slices in the contiguous layout (either memory format),
    every G-th sample in the strided layout."""
    if layout == "strided":
        return [x[g::groups] for g in range(groups)]
    return list(x.chunk(groups, 0))


def group_view(t: Tensor, groups: int, layout: str) -> tuple[Tensor, tuple[int, ...]]:
    """A view of a dense 4-D tensor (contiguous or channels_last) with separate group and channel dims, and the
    shape a (groups, C) tensor takes to broadcast over it: one elementwise call then applies per-group,
    per-channel constants to the whole batch."""
    b, c, h, w = t.shape
    n = b // groups
    if memory_format(t) == torch.channels_last:
        t = t.permute(0, 2, 3, 1)  # (B, H, W, C), dense
        if layout == "strided":
            return t.view(n, groups, h * w, c), (1, groups, 1, c)
        return t.view(groups, n * h * w, c), (groups, 1, c)
    if layout == "strided":
        return t.view(n, groups, c, h * w), (1, groups, c, 1)
    return t.view(groups, n, c, h * w), (groups, 1, c, 1)


def _dense(t: Tensor, fmt: torch.memory_format) -> Tensor:
    """`t` itself when dense in `fmt`, else a compact copy (one group of a strided channels_last batch: small,
    so the copy stays in cache and the allocator reuses its memory)."""
    return t if t.is_contiguous(memory_format=fmt) else t.contiguous(memory_format=fmt)


LOOP_MIN_GROUP_NUMEL = 32768
"""Groups of at least this many elements (nbs * C * H * W) take the group loop, smaller ones the channels trick."""


def use_channels_trick(x: Tensor, layout: str, groups: int) -> bool:
    """The one-call channels trick where it is a free view (strided layout of a contiguous tensor); under
    torch.compile, which cannot trace the loop's writes into slices but fuses the trick's copies itself; and for
    groups smaller than LOOP_MIN_GROUP_NUMEL elements, where the loop's fixed cost per group dominates. On the quiet
    2-core machine (1 and 2 threads alike) that threshold separates where each path is faster; the earlier rule
    (the trick whenever a CPU has several threads) came from timings under heavy load, where every one of the
    loop's OpenMP regions waited for a descheduled thread. On CUDA the same rule applies, unmeasured (no GPU)."""
    if (layout == "strided" and x.is_contiguous()) or torch.compiler.is_compiling():
        return True
    return x.numel() // groups < LOOP_MIN_GROUP_NUMEL


def _empty_like_input(x: Tensor) -> Tensor:
    return torch.empty_like(x, memory_format=memory_format(x))


def _stat_dtype(x: Tensor, weight: Tensor | None) -> torch.dtype:
    """PyTorch's batch norm keeps statistics in float32 for fp16/bf16 inputs (mixed-type kernels)."""
    if weight is not None:
        return weight.dtype
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def group_batch_norm_forward(x, weight, bias, rms, rvs, factor, eps, groups, layout):
    """Forward of every group into one output: (out, mean (G, C), invstd (G, C)); the rows of rms / rvs, one per
    group, are updated in place as each group's running buffers."""
    c = x.shape[1]
    if groups == 1:  # one functional call (also what torch.compile can trace: no writes into slices)
        rm = rms[0] if rms is not None else None
        rv = rvs[0] if rvs is not None else None
        out, mean, invstd = torch.native_batch_norm(x, weight, bias, rm, rv, True, factor, eps)
        return out, mean.view(1, c), invstd.view(1, c)
    out = _empty_like_input(x)
    sd = _stat_dtype(x, weight)
    mean = torch.empty(groups, c, dtype=sd, device=x.device)
    invstd = torch.empty(groups, c, dtype=sd, device=x.device)
    fmt = memory_format(x)
    xs, outs = group_slices(x, groups, layout), group_slices(out, groups, layout)
    for g in range(groups):
        rm = rms[g] if rms is not None else None
        rv = rvs[g] if rvs is not None else None
        xg = _dense(xs[g], fmt)
        og = outs[g] if xg is xs[g] else torch.empty_like(xg)
        _BN_FORWARD_OUT(xg, weight, bias, rm, rv, True, factor, eps, out=og, save_mean=mean[g], save_invstd=invstd[g])
        if og is not outs[g]:
            outs[g].copy_(og)
    return out, mean, invstd


def group_batch_norm_backward(grad_out, x, weights, mean, invstd, eps, groups, layout, mask):
    """Backward of every group: (grad_x, per-group grad_weight (G, C), per-group grad_bias (G, C)).

    `weights` is one (C,) weight for all groups, a (G, C) tensor of per-group weights, or None.
    """
    c = x.shape[1]
    fmt = memory_format(x)
    grad_out = grad_out.contiguous(memory_format=fmt)
    xs, gys = group_slices(x, groups, layout), group_slices(grad_out, groups, layout)
    if groups == 1:
        w = weights[0] if weights is not None and weights.dim() == 2 else weights
        grad_x, gw, gb = _BN_BACKWARD(grad_out, x, w, None, None, mean[0], invstd[0], True, eps, mask)
        return grad_x, gw.view(1, c) if mask[1] else None, gb.view(1, c) if mask[2] else None
    grad_x = _empty_like_input(x) if mask[0] else None
    gxs = group_slices(grad_x, groups, layout) if mask[0] else None
    # the per-group sums are computed anyway: keep them (G, C) even when the caller needs no affine gradients
    gw = torch.empty(groups, c, dtype=mean.dtype, device=x.device)
    gb = torch.empty(groups, c, dtype=mean.dtype, device=x.device)
    for g in range(groups):
        w = weights[g] if weights is not None and weights.dim() == 2 else weights
        xg, gyg = _dense(xs[g], fmt), _dense(gys[g], fmt)
        if mask[0] and xg is xs[g]:  # a dense slice: the kernel writes the group's input gradient in place
            _BN_BACKWARD_OUT(
                gyg,
                xg,
                w,
                None,
                None,
                mean[g],
                invstd[g],
                True,
                eps,
                [True, True, True],
                out0=gxs[g],
                out1=gw[g],
                out2=gb[g],
            )
            continue
        gx_g, gw[g], gb[g] = _BN_BACKWARD(gyg, xg, w, None, None, mean[g], invstd[g], True, eps, [mask[0], True, True])
        if mask[0]:
            gxs[g].copy_(gx_g)
    gw, gb = (gw if mask[1] else None), (gb if mask[2] else None)
    return grad_x, gw, gb


class GhostBatchNormFn(torch.autograd.Function):
    """Ghost BN as a loop of PyTorch's fused batch-norm kernels over groups, writing into slices of one output
    and one input gradient (no copy of the batch; the strided layout of a channels_last tensor copies one group
    at a time)."""

    @staticmethod
    def forward(ctx, x, weight, bias, rms, rvs, factor, eps, groups, layout):
        out, mean, invstd = group_batch_norm_forward(x, weight, bias, rms, rvs, factor, eps, groups, layout)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps, ctx.groups, ctx.layout = eps, groups, layout
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight, mean, invstd = ctx.saved_tensors
        need = ctx.needs_input_grad
        affine = weight is not None
        mask = [need[0], affine and need[1], affine and need[2]]
        args = (ctx.eps, ctx.groups, ctx.layout, mask)
        grad_x, gw, gb = group_batch_norm_backward(grad_out, x, weight, mean, invstd, *args)
        grad_w = gw.sum(0).to(weight.dtype) if mask[1] else None
        grad_b = gb.sum(0).to(weight.dtype) if mask[2] else None
        return grad_x, grad_w, grad_b, None, None, None, None, None, None


def _reduce_dims(view: Tensor) -> tuple[int, ...]:
    """The dims of a `group_view` that one group's statistics reduce over (all but group and channel)."""
    return (1,) if view.dim() == 3 else (0, 2)


class GroupedGhostBatchNormFn(torch.autograd.Function):
    """Ghost BN of a channels_last batch in a fixed number of operators: statistics of every group at once over
    `group_view`, normalization as one broadcast pass, BN's closed-form backward over the same view. Returns
    (out, mean (G, C), biased var (G, C)); statistics in float32 under autocast, as PyTorch's BN kernels."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, groups, layout):
        sd = _stat_dtype(x, weight)
        view, shape = group_view(x, groups, layout)
        dims = _reduce_dims(view)
        var, mean = torch.var_mean(view.to(sd), dim=dims, correction=0, keepdim=True)
        invstd = (var + eps).rsqrt()
        scale = invstd if weight is None else invstd * weight.view(shape[-1])
        shift = -mean * scale if bias is None else bias.view(shape[-1]) - mean * scale
        out = torch.empty_like(x)  # same memory format (channels_last) as the input
        out_view, _ = group_view(out, groups, layout)
        torch.addcmul(shift, view.to(sd), scale, out=out_view)  # written straight into the output's layout
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.groups, ctx.layout = groups, layout
        return out, mean.reshape(groups, -1), var.reshape(groups, -1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, _grad_mean, _grad_var):
        x, weight, mean, invstd = ctx.saved_tensors
        groups, layout = ctx.groups, ctx.layout
        view, shape = group_view(x, groups, layout)
        gy, _ = group_view(grad_out.contiguous(memory_format=torch.channels_last), groups, layout)
        dims = _reduce_dims(view)
        count = view.numel() // mean.numel()
        xhat = (view.to(mean.dtype) - mean) * invstd
        gy = gy.to(mean.dtype)
        sum_gy = gy.sum(dims, keepdim=True)
        sum_gy_xhat = (gy * xhat).sum(dims, keepdim=True)
        grad_x = None
        if ctx.needs_input_grad[0]:  # dx = w / sigma * (dy - mean(dy) - xhat * mean(dy * xhat)), per group
            w = invstd if weight is None else invstd * weight.view(shape[-1])
            gx = (gy - sum_gy / count - xhat * (sum_gy_xhat / count)) * w
            grad_x = torch.empty_like(x)
            group_view(grad_x, groups, layout)[0].copy_(gx)
        c = x.shape[1]
        grad_w = sum_gy_xhat.reshape(-1, c).sum(0).to(weight.dtype) if ctx.needs_input_grad[1] else None
        grad_b = sum_gy.reshape(-1, c).sum(0).to(weight.dtype) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None, None, None


def _grouped_ghost_batch_norm(x, weight, bias, running_mean, running_var, factor, eps, groups, layout) -> Tensor:
    """Ghost BN of a channels_last batch (`GroupedGhostBatchNormFn`), running buffers moved toward the average
    over groups of each group's mean and unbiased variance, as the other paths."""
    y, mean, var = GroupedGhostBatchNormFn.apply(x, weight, bias, eps, groups, layout)
    if running_mean is not None and factor:
        n = x.numel() // (groups * x.shape[1])
        with torch.no_grad():
            running_mean.lerp_(mean.mean(0).to(running_mean.dtype), factor)
            running_var.lerp_((var * (n / max(n - 1, 1))).mean(0).to(running_var.dtype), factor)
    return y


def ghost_batch_norm(x, weight, bias, running_mean, running_var, factor, eps, groups: int, layout: str) -> Tensor:
    """Ghost BN over `groups` groups of `x` in `layout`; moves the running buffers (if given) toward the
    average over groups of each group's mean and unbiased variance."""
    c, factor = x.shape[1], 0.0 if factor is None else factor
    if groups > 1 and is_channels_last(x) and not x.is_contiguous():  # no loop, no transposed copy
        return _grouped_ghost_batch_norm(x, weight, bias, running_mean, running_var, factor, eps, groups, layout)
    rms = running_mean.repeat(groups) if running_mean is not None else None
    rvs = running_var.repeat(groups) if running_var is not None else None
    if use_channels_trick(x, layout, groups):
        w = weight.repeat(groups) if weight is not None else None
        b = bias.repeat(groups) if bias is not None else None
        y = F.batch_norm(to_ghost_channels(x, groups, layout), rms, rvs, w, b, True, factor, eps)
        y = from_ghost_channels(y, groups, layout, x)
    else:
        rms = rms.view(groups, c) if rms is not None else None
        rvs = rvs.view(groups, c) if rvs is not None else None
        y = GhostBatchNormFn.apply(x, weight, bias, rms, rvs, factor, eps, groups, layout)
    if running_mean is not None:
        with torch.no_grad():
            running_mean.copy_(rms.view(groups, c).mean(0))
            running_var.copy_(rvs.view(groups, c).mean(0))
    return y
