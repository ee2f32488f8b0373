"""Several runs of one architecture in one process: k models stacked with torch.func and trained as one.

A sweep is dozens of small runs; on a GPU one small ResNet leaves most of the device idle. Stacking puts the
k models' parameters and buffers along a new leading dimension (`torch.func.stack_module_state`) and runs one
forward / backward for all of them with `vmap(functional_call)`: each model sees its own batch (inputs are
stacked too), and because the buffers are vmapped as well, every BatchNorm layer updates *its own model's*
running statistics in place (torch.func's "Patching Batch Norm" note: in-place updates are allowed on batched
buffers). Models share nothing; the summed loss gives each model exactly its own gradient.

The optimizer is SGD (momentum, Nesterov, weight decay, dampening 0, as torch.optim.SGD) applied to the stacked
tensors with one learning rate per model, so runs may differ in seed (initialization, data order) and lr.
Everything else - architecture, norm layer, batch size - must be the same. `tests/test_stacked.py` checks that
k stacked runs equal k separate runs; `scripts/bench.py --sections stack` measures the aggregate images/s.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap


class StackedModels:
    """k copies of one architecture with their own parameters and buffers, run as one vmapped model."""

    def __init__(self, models: Sequence[nn.Module]):
        if not models:
            raise ValueError("StackedModels needs at least one model")
        structure = [[(n, tuple(t.shape)) for n, t in m.state_dict().items()] for m in models]
        if any(s != structure[0] for s in structure[1:]):
            raise ValueError("stacked models must share one architecture (the same state_dict keys and shapes)")
        self.k = len(models)
        self.params, self.buffers = stack_module_state(list(models))  # leaves with requires_grad, stacked copies
        self.base = copy.deepcopy(models[0]).to("meta")  # the architecture only; weights come from the stacks
        self.training = True

        def one(params, buffers, x):
            return functional_call(self.base, (params, buffers), (x,))

        self._forward = vmap(one, in_dims=(0, 0, 0), randomness="different")

    def train(self, mode: bool = True) -> StackedModels:
        self.training = mode
        self.base.train(mode)
        return self

    def eval(self) -> StackedModels:
        return self.train(False)

    def __call__(self, x: Tensor) -> Tensor:
        """x: (k, batch, ...) -> (k, batch, outputs), model i on x[i]."""
        if x.shape[0] != self.k:
            raise ValueError(f"stacked input must have the {self.k} models along dim 0, got shape {tuple(x.shape)}")
        return self._forward(self.params, self.buffers, x)

    def state_dict(self, i: int) -> dict[str, Tensor]:
        """Model i's parameters and buffers, as its own nn.Module's state_dict would hold them."""
        return {name: t[i].detach().clone() for name, t in {**self.params, **self.buffers}.items()}


class StackedSGD:
    """torch.optim.SGD (dampening 0) on stacked parameters, with one learning rate per model."""

    def __init__(self, params: dict[str, Tensor], lrs: Sequence[float], momentum=0.0, weight_decay=0.0, nesterov=False):
        if nesterov and momentum <= 0:
            raise ValueError("nesterov needs momentum > 0")
        self.params = list(params.values())
        self.lrs = torch.as_tensor(list(lrs), dtype=self.params[0].dtype, device=self.params[0].device)
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, nesterov
        self.buffers: list[Tensor | None] = [None] * len(self.params)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for j, p in enumerate(self.params):
            if p.grad is None:
                continue
            d = p.grad.add(p, alpha=self.weight_decay) if self.weight_decay else p.grad
            if self.momentum:
                buf = self.buffers[j]
                buf = d.clone() if buf is None else buf.mul_(self.momentum).add_(d)  # first step: buf = d
                self.buffers[j] = buf
                d = d.add(buf, alpha=self.momentum) if self.nesterov else buf
            p.sub_(d * self.lrs.view(-1, *([1] * (p.dim() - 1))))


def stacked_step(models: StackedModels, opt: StackedSGD, x: Tensor, y: Tensor, loss_fn=nn.functional.cross_entropy):
    """One training step of every stacked model on its own batch; returns the k losses."""
    out = models(x)  # (k, batch, classes)
    losses = vmap(loss_fn)(out, y)
    opt.zero_grad()
    losses.sum().backward()  # model i's parameters get exactly d loss_i / d theta_i
    opt.step()
    return losses.detach()
