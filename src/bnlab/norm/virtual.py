"""Virtual BN: normalize with statistics of the batch plus extra forward-only reference images.

Salimans et al. 2016 ("Improved Techniques for Training GANs", sec. 3.4) normalize each example with statistics
of a fixed reference batch; Wu ("Devils in BatchNorm") lists it as a way to raise the normalization batch size
without back-propagating through the extra images. Here:

    with virtual_bn(model, reference):   # one extra no-grad forward of `reference`, at entry
        loss = loss_fn(model(x), y)      # each BatchNorm2d normalizes x with stats of (x + reference)
    loss.backward()                      # gradients flow through x's share of the statistics only

At entry every bnlab BatchNorm2d records (count, mean, variance) of its input on the reference batch, which
it normalizes with the reference's own statistics (as in Salimans et al.: "the reference batch is normalized
using only its own statistics"). Inside the block, a training-mode forward combines the batch's moments (with
gradient) with the recorded ones (constants) and moves the EMA toward the combined statistics. The statistics
depend on the current weights, so enter the block once per step: the cost is one forward of the reference batch
per step, without a backward, and memory for one (C,) triple per layer. Works with plain batch statistics only
(not with Ghost/Sync nbs, not with train_stats="running").

Which variant: Salimans et al. normalize each example x with the statistics of {x} plus the reference batch
(one normalization per example). This file implements the batch-level variant Wu's talk describes ("to increase
NBS, use more images to run forward-only"): every example of the current batch B is normalized with the
statistics of B plus the reference batch R, so NBS = |B| + |R| and gradients flow through B's share only.
With |B| = 1 the two coincide. `attach_reference_batch` makes it a property of the model (config `norm=virtual`):
every training-mode forward with gradients enabled (a training step) runs the reference pass first; forwards
without gradients (evaluation in training mode, Precise BN, the health monitor) use plain batch statistics.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn

import bnlab.norm.validate as check
from bnlab.config_errors import ConfigError
from bnlab.norm.batch_count import count_batch
from bnlab.norm.batchnorm import BatchNorm2d
from bnlab.norm.stats import batch_norm_with_moments, local_moments


class VirtualBatchNorm2d(BatchNorm2d, config_name="virtual"):
    """`norm=virtual`: a plain BatchNorm2d (nbs=None) whose model gets the reference batch attached."""

    @classmethod
    def from_config(cls, num_features: int, eps: float, momentum: float, reference_size: int, device=None,
                    dtype=None) -> VirtualBatchNorm2d:  # fmt: skip
        return cls(num_features, eps=eps, momentum=momentum, device=device, dtype=dtype)

    @classmethod
    def check_config(cls, cfg) -> None:
        check.momentum(cfg.norm)
        check.positive_int(cfg.norm, "reference_size")

    @classmethod
    def attach(cls, model: nn.Module, cfg, data) -> None:
        size, seed = int(cfg.norm.reference_size), int(cfg.data.split_seed)
        attach_reference_batch(model, reference_batch(data.train, size, seed))


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


class ReferenceStats:
    """Per-layer state: records the reference batch's moments on the first call, then normalizes with them."""

    def __init__(self):
        self.moments: tuple[Tensor, Tensor, Tensor] | None = None

    def __call__(self, layer: BatchNorm2d, x: Tensor) -> Tensor:
        if self.moments is None:  # the reference pass: its own statistics, nothing updated
            self.moments = tuple(t.detach() for t in local_moments(x))
            return batch_norm_with_moments(x, layer.weight, layer.bias, None, None, 0.0, layer.eps)
        rm = rv = factor = None
        if layer.update_stats:
            if layer.momentum is None:  # cumulative average: the count kept on the host (norm/batch_count.py)
                factor = 1.0 / count_batch(layer)
            else:
                layer.num_batches_tracked.add_(1)
                factor = layer.momentum
            rm, rv = layer.running_mean, layer.running_var
        return batch_norm_with_moments(x, layer.weight, layer.bias, rm, rv, factor, layer.eps, extra=self.moments)


@contextmanager
def virtual_bn(model: nn.Module, reference: Tensor):
    """Inside the block, training-mode forwards of `model` normalize with batch + `reference` statistics."""
    layers = [m for m in model.modules() if isinstance(m, BatchNorm2d)]
    for m in layers:
        if m.nbs is not None or m.process_group is not None or m.train_stats != "batch":
            raise ValueError(f"virtual_bn needs plain BatchNorm2d layers (nbs=None, train_stats='batch'), got {m}")
        m.virtual = ReferenceStats()
    try:
        modes = [m.training for m in layers]
        for m in layers:
            m.train()  # record even if the model is in eval mode now
        with torch.no_grad():
            model(reference)
        for m, was_training in zip(layers, modes):
            m.train(was_training)
        yield model
    finally:
        for m in layers:
            m.virtual = None


def _virtual_enter(module: nn.Module, args: tuple):
    if not (module.training and torch.is_grad_enabled()) or module._virtual_ctx is not None:
        return None  # not a training step (or the reference pass itself, which runs without gradients)
    ctx = virtual_bn(module, module._virtual_reference)
    ctx.__enter__()  # the reference pass: a forward of `module` itself, which these hooks see and let through
    module._virtual_ctx = ctx
    return None


def _virtual_exit(module: nn.Module, args: tuple, output):
    if module._virtual_ctx is not None:
        ctx, module._virtual_ctx = module._virtual_ctx, None
        ctx.__exit__(None, None, None)
    return None


def attach_reference_batch(model: nn.Module, reference: Tensor) -> nn.Module:
    """Virtual BN on every training step of `model`: its forward first runs `reference` (a fixed batch, forward
    only) and then normalizes the batch with batch + reference statistics. The model's state_dict is unchanged."""
    model._virtual_reference = reference
    model._virtual_ctx = None
    model.register_forward_pre_hook(_virtual_enter)
    model.register_forward_hook(_virtual_exit)
    return model
