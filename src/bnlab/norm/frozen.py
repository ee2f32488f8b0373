"""Frozen BN: a constant per-channel affine from given or loaded statistics (Wu, "Devils in BatchNorm").

y = weight * (x - running_mean) / sqrt(running_var + eps) + bias, in training and in evaluation alike: no batch
statistics, no updates. Used to fine-tune a BN-trained model with small batches (detection), and for "frozen BN"
networks whose normalization is fixed, e.g. at its value at initialization (Myrtle, "How to train your ResNet 7").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.norm.layer import NormLayer, is_batchnorm


class FrozenBatchNorm2d(nn.Module, NormLayer, config_name="frozen"):
    """A constant affine with nn.BatchNorm2d's state_dict keys (minus num_batches_tracked, ignored on load).

    By default weight and bias are buffers, as torchvision's FrozenBatchNorm2d; `trainable_affine=True` makes them
    parameters (the normalization stays frozen while the affine learns).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, trainable_affine: bool = False, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.num_features, self.eps, self.trainable_affine = num_features, eps, trainable_affine
        weight, bias = torch.ones(num_features, **kw), torch.zeros(num_features, **kw)
        if trainable_affine:
            self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("bias", bias)
        self.register_buffer("running_mean", torch.zeros(num_features, **kw))
        self.register_buffer("running_var", torch.ones(num_features, **kw))

    # --- what bnlab asks of a norm layer (norm/layer.py): running statistics, but constants; not a BN layer ---
    has_running_stats = True

    @classmethod
    def from_batchnorm(cls, bn: nn.Module, trainable_affine: bool = False) -> FrozenBatchNorm2d:
        """Freeze a BN-like layer at its current running statistics (a SeparateBatchNorm2d: its active domain)."""
        rm = bn.running_mean
        frozen = cls(bn.num_features, bn.eps, trainable_affine, device=rm.device, dtype=rm.dtype)
        with torch.no_grad():
            frozen.running_mean.copy_(bn.running_mean)
            frozen.running_var.copy_(bn.running_var)
            if getattr(bn, "weight", None) is not None:
                frozen.weight.copy_(bn.weight)
                frozen.bias.copy_(bn.bias)
        return frozen

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
        state_dict.pop(prefix + "num_batches_tracked", None)  # so BatchNorm2d checkpoints load as they are
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors)

    def forward(self, x: Tensor) -> Tensor:
        # eval-mode batch norm is exactly this affine, as one fused kernel (and its backward, for the affine too)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, trainable_affine={self.trainable_affine}"


def freeze_batchnorm(model: nn.Module, trainable_affine: bool = False) -> nn.Module:
    """Replace every BN layer of `model` (norm.layer.is_batchnorm: torch's, bnlab's, Sync, Renorm, Separate) by a
    FrozenBatchNorm2d holding its current statistics and affine; returns the model (a new object if `model` itself
    is a BN layer)."""
    if callable(getattr(type(model), "frozen", None)):  # a layer's own way (norm/layer.py)
        return model.frozen(trainable_affine)
    if is_batchnorm(model):
        refuse_unfaithful(model)
        return FrozenBatchNorm2d.from_batchnorm(model, trainable_affine)
    for name, child in model.named_children():
        new = freeze_batchnorm(child, trainable_affine)
        if new is not child:
            setattr(model, name, new)
    return model


def _forward_owner(layer: nn.Module) -> type:
    return next(c for c in type(layer).__mro__ if "forward" in vars(c))


def refuse_unfaithful(layer: nn.Module) -> None:
    """Frozen BN reproduces BN's normalization and affine, nothing else: a BN subclass whose own `forward` (outside
    torch and bnlab.norm) may add to them is refused, named, unless it says how it freezes with `frozen()`."""
    owner = _forward_owner(layer)
    if owner.__module__.split(".")[0] == "torch" or owner.__module__.startswith("bnlab.norm."):
        return
    raise TypeError(
        f"freeze_batchnorm: {type(layer).__name__} overrides forward ({owner.__module__}.{owner.__qualname__}), "
        "which FrozenBatchNorm2d would silently drop; define frozen(self, trainable_affine) -> nn.Module on it"
    )
