"""Precise BN: replace the EMA by the true population statistics of the current, frozen model.

Wu, "Devils in BatchNorm" (EMA vs Precise BN slides) and Wu & Johnson 2021 ("Rethinking 'Batch' in BatchNorm",
sec. 3 and appendix): the EMA is biased toward recent, older models and is short-sighted; instead freeze the
model and aggregate each BN layer's input statistics over N samples. As in pycls/fvcore, the network runs in
training mode during the pass, so upstream BN layers normalize with batch statistics as they do in training
(their running statistics are held fixed: momentum 0 during the pass). Every layer normalizes by batch statistics
during the pass, Batch Renorm with r = 1, d = 0 and a train_stats="running" BatchNorm2d included: with r, d (or
normalization) from the old running averages, downstream layers would record inputs of a network that does not
exist at evaluation, where every layer uses the new statistics. Each batch is weighted by its element count -
mean = sum x / n, var = sum x^2 / n - mean^2 over all elements - so batches of any and unequal sizes give the
exact population mean and (biased) variance of every layer's inputs.

Adaptive BN (Li et al. 2016, "Revisiting Batch Normalization for Practical Domain Adaptation") is the same
computation on target-domain data: `adaptive_bn`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from bnlab.norm.layer import batch_statistics, batchnorm_layers
from bnlab.norm.stats import channel_sums, mean_var


@torch.no_grad()
def precise_bn(model: nn.Module, batches: Iterable, num_samples: int = 8192) -> int:
    """Set every BN layer's (norm.layer.is_batchnorm) running_mean/running_var to its population statistics over
    the first `num_samples`.

    `batches`: input tensors or (input, target, ...) tuples, of any sizes; the last one is cut at `num_samples`.
    Parameters are untouched; train/eval modes, momenta and all other BN buffers (num_batches_tracked) are
    restored. Returns the number of samples used (fewer than `num_samples` if `batches` runs out).
    Single-process: under DDP each rank computes statistics of its own batches.
    """
    layers = batchnorm_layers(model)
    sums: dict[nn.Module, list] = {}

    def record(layer, args):
        x = args[0]
        new = channel_sums(x.double() if x.dtype != torch.float64 else x)
        old = sums.get(layer)
        sums[layer] = list(new) if old is None else [a + b for a, b in zip(old, new)]

    device = next((t.device for t in [*model.parameters(), *model.buffers()]), torch.device("cpu"))
    modes = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in layers]
    buffers = [{k: b.clone() for k, b in m.named_buffers()} for m in layers]
    handles = [m.register_forward_pre_hook(record) for m in layers]
    seen = 0
    try:
        model.train()
        for m in layers:
            m.momentum = 0.0  # hold upstream running statistics fixed: no "moving model" during the pass
        for batch in batches:
            if seen >= num_samples:
                break
            x = batch[0] if isinstance(batch, tuple | list) else batch
            x = x[: num_samples - seen].to(device)
            with batch_statistics(model):
                model(x)
            seen += len(x)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
        for m, momentum, saved in zip(layers, momenta, buffers):
            m.momentum = momentum
            for k, b in m.named_buffers():
                b.copy_(saved[k])
    for m in layers:
        if m in sums:  # a layer the batches never reached keeps its statistics
            mean, var = mean_var(*sums[m])
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
    return seen


def adaptive_bn(model: nn.Module, target_batches: Iterable, num_samples: int = 8192) -> int:
    """Adaptive BN (Li et al. 2016): population statistics recomputed on target-domain data (= `precise_bn`)."""
    return precise_bn(model, target_batches, num_samples)


@torch.no_grad()
def frozen_ema(model: nn.Module, batches: Iterable, steps: int | None = None, max_steps: int | None = None) -> int:
    """Re-run the training EMA on the frozen model: the "moving model" taken out of the EMA.

    Every BN layer's running statistics are reset to their initial values (mean 0, var 1, no batches tracked),
    then `steps` training-mode forward passes (default: as many as training took, the layers' largest
    num_batches_tracked) move them with the layers' own momenta, cycling through `batches`. Against Precise BN
    the result keeps the EMA's initial-value weight (1 - momentum)^steps and its batch-to-batch noise, but not
    the staleness of averaging statistics of older models (Wu, "Devils in BatchNorm": the EMA is biased, short,
    and "computed on a moving model"). Parameters are untouched and train/eval modes restored; the running
    statistics and step counters are left as the re-run ends. `max_steps` caps the re-run (its cost, linear in
    the schedule instead of growing with it: the initial value then weighs (1 - momentum)^max_steps, below
    float32's 2^-24 for max_steps >= 17 / momentum). Returns the number of forward passes.
    """
    layers = batchnorm_layers(model)
    if steps is None:
        steps = max((int(m.num_batches_tracked) for m in layers), default=0)
    if max_steps is not None:
        steps = min(steps, int(max_steps))
    device = next((t.device for t in [*model.parameters(), *model.buffers()]), torch.device("cpu"))
    modes = {m: m.training for m in model.modules()}
    for m in layers:
        m.reset_running_stats()
    done = 0
    try:
        model.train()
        while done < steps:
            before = done
            for batch in batches:
                x = batch[0] if isinstance(batch, tuple | list) else batch
                model(x.to(device))
                done += 1
                if done >= steps:
                    break
            if done == before:
                raise ValueError("frozen_ema: `batches` is empty")
    finally:
        for m, mode in modes.items():
            m.training = mode
    return done
