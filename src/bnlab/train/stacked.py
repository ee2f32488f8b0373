"""Several runs of one architecture in one process: k models stacked with torch.func and trained as one.

A sweep is dozens of small runs; on a GPU one small ResNet leaves most of the device idle. Stacking puts the
k models' parameters and buffers along a new leading dimension (`torch.func.stack_module_state`) and runs one
forward / backward for all of them with `vmap(functional_call)`: each model sees its own batch (inputs are
stacked too), and because the buffers are vmapped as well, every BatchNorm layer updates *its own model's*
running statistics in place (torch.func's "Patching Batch Norm" note: in-place updates are allowed on batched
buffers). Models share nothing; the summed loss gives each model exactly its own gradient.

The optimizer is SGD (momentum, Nesterov, weight decay, dampening 0, as torch.optim.SGD) applied to the stacked
tensors with one learning rate per model, so runs may differ in seed (initialization, data order) and lr.
Everything else - architecture, norm layer, batch size - must be the same. Evaluation (`evaluate_stacked`) runs
every model in eval mode (its own running statistics) on the same validation batches.

Layers that cannot run under vmap are refused when the models are stacked (`unstackable_layers`; each norm layer
says why itself, `why_not_stackable` in its file):
Ghost / Sync BN (nbs) and Batch Renorm (their kernels are autograd.Functions without a vmap rule, or
communicate), momentum=None (reads num_batches_tracked as a Python number), forward hooks (Virtual BN's reference
batch, domain routing: they would act on the shared template, not per model) and tensors held outside parameters
and buffers (they would be shared). Plain BN (nn.BatchNorm2d, bnlab's BatchNorm2d with nbs=None, either
train_stats), Frozen BN, GroupNorm, LayerNorm, InstanceNorm and Separate BN (one domain per call) stack. Any other
layer that fails inside vmap is named by the error of the first forward.

`tests/test_stacked.py` checks that k stacked runs equal k separate runs; `scripts/bench_stack.py` measures the
aggregate images/s.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from bnlab.norm.layer import why_not_stackable

__all__ = ["StackedModels", "StackedSGD", "StackingError", "evaluate_stacked", "stacked_step", "unstackable_layers"]


class StackingError(ValueError):
    """A model that cannot be stacked with torch.func; the message names the layer and why."""


def _why_not_stackable(m: nn.Module) -> str | None:
    """Why this one module cannot run under vmap with per-model state, or None if it can."""
    if m._forward_hooks or m._forward_pre_hooks:
        return "has forward hooks (Virtual BN's reference, domain routing, ...): they would act on one shared template"
    reason = why_not_stackable(m)  # the norm layer's own answer (norm/layer.py)
    if reason:
        return reason
    held = [k for k, v in vars(m).items() if isinstance(v, Tensor)]
    if held:
        return f"holds tensor {held[0]!r} outside its parameters and buffers: every stacked model would share it"
    return None


def unstackable_layers(model: nn.Module) -> list[tuple[str, str, str]]:
    """(name, type, reason) for every submodule of `model` that cannot be stacked; empty when all can."""
    found = [(name or "<model>", type(m).__name__, _why_not_stackable(m)) for name, m in model.named_modules()]
    return [f for f in found if f[2] is not None]


def _describe(problems: list[tuple[str, str, str]]) -> str:
    """One line per (type, reason): the first layers' names and how many there are."""
    by_reason: dict[tuple[str, str], list[str]] = {}
    for name, kind, reason in problems:
        by_reason.setdefault((kind, reason), []).append(name)
    lines = []
    for (kind, reason), names in by_reason.items():
        shown = ", ".join(repr(n) for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        lines.append(f"{kind} {shown}: {reason}")
    return "cannot stack these models with torch.func:\n  " + "\n  ".join(lines)


@contextmanager
def _naming_the_failing_layer(template: nn.Module):
    """Turn an error raised inside the vmapped forward into a StackingError naming the innermost layer."""
    names = {m: name or "<model>" for name, m in template.named_modules()}
    entered: list[nn.Module] = []

    def enter(m, args) -> None:
        entered.append(m)

    def leave(m, args, out) -> None:  # returns None: the output stays as it is
        entered.pop()

    handles = [h for m in names for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        yield
    except Exception as e:
        if not entered:
            raise
        m = entered[-1]
        msg = f"layer {names[m]!r} ({type(m).__name__}) failed under torch.func.vmap: {e}".splitlines()[0]
        raise StackingError(msg) from e
    finally:
        for h in handles:
            h.remove()


class StackedModels:
    """k copies of one architecture with their own parameters and buffers, run as one vmapped model."""

    def __init__(self, models: Sequence[nn.Module]):
        if not models:
            raise ValueError("StackedModels needs at least one model")
        structure = [[(n, tuple(t.shape)) for n, t in m.state_dict().items()] for m in models]
        if any(s != structure[0] for s in structure[1:]):
            raise ValueError("stacked models must share one architecture (the same state_dict keys and shapes)")
        problems = unstackable_layers(models[0])
        if problems:
            raise StackingError(_describe(problems))
        self.k = len(models)
        self.params, self.buffers = stack_module_state(list(models))  # leaves with requires_grad, stacked copies
        self.template = copy.deepcopy(models[0]).to("meta")  # the architecture only; weights come from the stacks
        self.training = models[0].training
        self.template.train(self.training)
        self._checked: set[tuple[bool, bool]] = set()  # (training, shared input) forwards that ran once

        def one(params, buffers, x):
            return functional_call(self.template, (params, buffers), (x,))

        self._own_batches = vmap(one, in_dims=(0, 0, 0), randomness="different")
        self._shared_batch = vmap(one, in_dims=(0, 0, None), randomness="different")

    def train(self, mode: bool = True) -> StackedModels:
        self.training = mode
        self.template.train(mode)
        return self

    def eval(self) -> StackedModels:
        return self.train(False)

    def __call__(self, x: Tensor, shared: bool = False) -> Tensor:
        """x: (k, batch, ...) -> (k, batch, outputs), model i on x[i]; shared=True: x (batch, ...) for every model."""
        if not shared and x.shape[0] != self.k:
            raise ValueError(f"stacked input must have the {self.k} models along dim 0, got shape {tuple(x.shape)}")
        forward = self._shared_batch if shared else self._own_batches
        if (self.training, shared) in self._checked:
            return forward(self.params, self.buffers, x)
        with _naming_the_failing_layer(self.template):  # the first call of each kind: name a failing layer
            out = forward(self.params, self.buffers, x)
        self._checked.add((self.training, shared))
        return out

    def state_dict(self, i: int) -> dict[str, Tensor]:
        """Model i's parameters and buffers, as its own nn.Module's state_dict would hold them."""
        return {name: t[i].detach().clone() for name, t in {**self.params, **self.buffers}.items()}

    def model(self, i: int) -> nn.Module:
        """Model i as a standalone nn.Module (a copy): for bnlab's other evaluation modes, checkpoints, analysis."""
        device = next(iter({**self.params, **self.buffers}.values())).device
        m = copy.deepcopy(self.template).to_empty(device=device)
        m.load_state_dict(self.state_dict(i))
        return m.train(self.training)


class StackedSGD:
    """torch.optim.SGD (dampening 0) on stacked parameters, with one learning rate per model."""

    def __init__(self, params: dict[str, Tensor], lrs: Sequence[float], momentum=0.0, weight_decay=0.0, nesterov=False):
        if nesterov and momentum <= 0:
            raise ValueError("nesterov needs momentum > 0")
        self.params = list(params.values())
        k = self.params[0].shape[0]
        if len(lrs) != k:
            raise ValueError(f"one learning rate per stacked model: got {len(lrs)} for {k} models")
        self.lrs = torch.as_tensor(list(lrs), dtype=self.params[0].dtype, device=self.params[0].device)
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, nesterov
        self.buffers: list[Tensor | None] = [None] * len(self.params)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, lr_factor: float = 1.0) -> None:
        """One SGD step; model i moves with lr lrs[i] * lr_factor (the schedule's multiplier, optim.py)."""
        lrs = self.lrs * lr_factor
        for j, p in enumerate(self.params):
            if p.grad is None:
                continue
            d = p.grad.add(p, alpha=self.weight_decay) if self.weight_decay else p.grad
            if self.momentum:
                buf = self.buffers[j]
                buf = d.clone() if buf is None else buf.mul_(self.momentum).add_(d)  # first step: buf = d
                self.buffers[j] = buf
                d = d.add(buf, alpha=self.momentum) if self.nesterov else buf
            p.sub_(d * lrs.view(-1, *([1] * (p.dim() - 1))))


def stacked_step(
    models: StackedModels, opt: StackedSGD, x: Tensor, y: Tensor, loss_fn=nn.functional.cross_entropy, lr_factor=1.0
) -> Tensor:
    """One training step of every stacked model on its own batch (x: (k, batch, ...), y: (k, batch)); returns
    the k losses."""
    out = models(x)  # (k, batch, classes)
    losses = vmap(loss_fn)(out, y)
    opt.zero_grad()
    losses.sum().backward()  # model i's parameters get exactly d loss_i / d theta_i
    opt.step(lr_factor)
    return losses.detach()


@torch.no_grad()
def evaluate_stacked(models: StackedModels, batches: Iterable, loss_fn=nn.functional.cross_entropy) -> dict:
    """Every model in eval mode (its own running statistics) on the same batches (x, y, ...): {'loss', 'err'},
    each a (k,) tensor, as bnlab.train.evaluate's "running" mode gives per model. The mode is restored."""
    was_training = models.training
    models.eval()
    loss_sum, wrong, n = 0.0, 0, 0
    try:
        for x, y, *_ in batches:
            out = models(x, shared=True)  # (k, batch, classes)
            loss_sum = loss_sum + vmap(loss_fn, in_dims=(0, None))(out, y) * len(y)
            wrong = wrong + (out.argmax(-1) != y).sum(-1)
            n += len(y)
    finally:
        models.train(was_training)
    return {"loss": loss_sum / max(n, 1), "err": torch.as_tensor(wrong, dtype=torch.float64) / max(n, 1)}
