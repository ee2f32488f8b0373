"""Where a BN net's eval-mode output parts from its training-mode output: per channel, per layer, at the head.

Three measurements for the forum case (claim C4), each on a trained model and none changing it:

- `scale_ratio`: per BN channel, E_B[1 / sigma_B] * sigma_run over training batches, where sigma_B = sqrt(var_B +
  eps) is a batch's standard deviation and sigma_run = sqrt(running_var + eps) the one eval mode divides by.
  Training mode scales a channel by 1 / sigma_B, eval mode by 1 / sigma_run. By Jensen's inequality E[1 / sigma_B]
  >= 1 / sqrt(E[sigma_B^2]), and running_var tracks E[var_B], so the ratio is >= 1 up to EMA noise; it is far above
  1 when a channel's batch variance is heavy-tailed (most batches small, a few holding the images that make it
  fire dominate the average). Such a channel comes out smaller in eval mode than in training mode - the thread's
  shrinking features - and Precise BN cannot fix it (it computes the same population variance).
- `head_moments`: mean and variance of the classifier's input features in training mode (batch statistics) and in
  eval mode (running statistics): the thread's "train mean 0.21 / var 0.218 vs eval 0.14 / 0.075".
- `layer_swap`: eval-mode loss with the running statistics of one BN layer at a time replaced by Precise BN's
  (population statistics of the same frozen model): where an EMA-lag gap comes from. A gap that Precise BN
  removes is EMA lag; one it leaves is a batch-vs-population inconsistency.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from bnlab.diagnostics.health import _collect, _per_channel, bn_layers
from bnlab.norm.modes import mode, preserved_buffers


def _eps(module: nn.Module) -> float:
    return float(getattr(module, "eps", 1e-5))


def scale_ratio(model: nn.Module, batches, n_batches: int) -> dict[str, torch.Tensor]:
    """{BN layer name: per-channel E_B[1 / sigma_B] * sigma_run} over the first `n_batches` training batches."""
    inv_sigma: dict[str, torch.Tensor] = {}

    def record(name, module, x):
        var_b = _per_channel(x).var(1, unbiased=False)
        inv = (var_b + _eps(module)).rsqrt()
        inv_sigma[name] = inv_sigma.get(name, 0) + inv / n_batches

    _collect(model, batches, n_batches, train=True, fn=record)
    out = {}
    for name, m in bn_layers(model):
        if name in inv_sigma:
            out[name] = inv_sigma[name] * (m.running_var.float() + _eps(m)).sqrt()
    return out


def classifier(model: nn.Module) -> nn.Linear:
    """The model's head: its last nn.Linear."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not heads:
        raise ValueError("the model has no nn.Linear head to read features from")
    return heads[-1]


@torch.no_grad()
def head_moments(model: nn.Module, loader, train: bool, n_batches: int | None = None) -> dict:
    """{'mean', 'var'} of the classifier's input over `loader`'s images, in training or eval mode (buffers
    restored). In training mode every batch is normalized by its own statistics, as in training."""
    feats = []
    handle = classifier(model).register_forward_pre_hook(lambda mod, inp: feats.append(inp[0].detach().float()))
    try:
        with mode(model, train=train), preserved_buffers(model):
            for i, (x, *_) in enumerate(loader):
                if n_batches is not None and i >= n_batches:
                    break
                model(x)
    finally:
        handle.remove()
    f = torch.cat(feats)
    return {"mean": f.mean().item(), "var": f.var(unbiased=False).item()}


@torch.no_grad()
def eval_loss(model: nn.Module, loader, loss_fn) -> float:
    total, n = 0.0, 0
    with mode(model, train=False):
        for x, y, *_ in loader:
            total += loss_fn(model(x), y).float().item() * len(y)
            n += len(y)
    return total / max(n, 1)


def layer_swap(model: nn.Module, precise: nn.Module, loader, loss_fn) -> list[dict]:
    """Eval-mode loss of `model` as is, with every BN layer's running statistics taken from `precise` (a copy
    of the same weights after Precise BN), and with one layer's at a time."""
    ref = dict(bn_layers(precise))
    rows = [{"layer": "(none)", "loss": eval_loss(model, loader, loss_fn)}]
    rows.append({"layer": "(all)", "loss": eval_loss(precise, loader, loss_fn)})
    for name, _ in bn_layers(model):
        swapped = copy.deepcopy(model)
        layer = dict(bn_layers(swapped))[name]
        layer.running_mean.copy_(ref[name].running_mean)
        layer.running_var.copy_(ref[name].running_var)
        rows.append({"layer": name, "loss": eval_loss(swapped, loader, loss_fn)})
    return rows
