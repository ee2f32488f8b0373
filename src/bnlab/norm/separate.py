"""Separate BN: one shared affine, separate running statistics per domain (Wu, "Devils in BatchNorm").

When batches come from different domains (source/target, real/fake, per dataset), one EMA averages
distributions that are never seen together at test time. Each domain keeps its own running mean and variance;
the learned weight and bias are shared. The domain is chosen per call (`layer(x, domain=1)`), per sample (`domain`
a tensor of ids: each domain's samples are normalized by their own batch statistics and move only their own
EMA, so one mixed-domain batch trains every domain), or, for models whose forward does not pass it, for every
layer at once with `use_domain(model, d)` / `set_domain(model, d)` or the ids of the model's input
(`route_domains`: `model(x, domain_ids)`).
state_dict: ``weight, bias, domains.<d>.running_mean, domains.<d>.running_var, domains.<d>.num_batches_tracked``.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bnlab.norm.validate as check
from bnlab.config_errors import ConfigError
from bnlab.norm.batch_count import count_batch
from bnlab.norm.layer import NormLayer


class DomainStats(nn.Module):
    """The running statistics of one domain (buffers only)."""

    def __init__(self, num_features: int, device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.register_buffer("running_mean", torch.zeros(num_features, **kw))
        self.register_buffer("running_var", torch.ones(num_features, **kw))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))


class SeparateBatchNorm2d(nn.Module, NormLayer, config_name="separate"):
    """BN whose running statistics are per domain; `running_mean`/`running_var` are those of the active domain.

    Args as nn.BatchNorm2d (momentum: weight of the new batch; None = cumulative average), plus `num_domains`.
    """

    def __init__(
        self,
        num_features: int,
        num_domains: int = 2,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if not isinstance(num_domains, int) or num_domains < 1:
            raise ValueError(f"num_domains must be a positive integer, got {num_domains!r}")
        self.num_features, self.num_domains, self.eps, self.momentum = num_features, num_domains, eps, momentum
        self.affine = affine
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.ones(num_features, **kw)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features, **kw)) if affine else None
        self.domains = nn.ModuleList(DomainStats(num_features, **kw) for _ in range(num_domains))
        self.domain = 0  # the active domain when forward is not told one
        self.batch_domains: Tensor | None = None  # per-sample ids of the current model input (route_domains)

    # the active domain's statistics, so code written for BN layers (precise_bn, freezing) works on it
    running_mean = property(lambda self: self.domains[self.domain].running_mean)
    running_var = property(lambda self: self.domains[self.domain].running_var)
    num_batches_tracked = property(lambda self: self.domains[self.domain].num_batches_tracked)

    # --- what bnlab asks of a norm layer (norm/layer.py): a BN layer, through its active domain ---
    is_batchnorm = has_running_stats = True

    @classmethod
    def check_config(cls, cfg) -> None:
        check.momentum(cfg.norm, allow_none=True)
        if any(m in ("precise", "adaptive") for m in cfg.eval.get("modes", [])):
            raise ConfigError(
                "eval.modes", "precise/adaptive recompute one set of statistics; Separate BN keeps one per domain"
            )
        check.positive_int(cfg.norm, "num_domains")

    def reset_running_stats(self) -> None:
        """The active domain's statistics back to mean 0, var 1, no batches (as nn.BatchNorm2d's)."""
        stats = self.domains[self.domain]
        stats.running_mean.zero_()
        stats.running_var.fill_(1)
        stats.num_batches_tracked.zero_()

    def set_domain(self, domain: int) -> None:
        if not 0 <= domain < self.num_domains:
            raise ValueError(f"domain {domain} out of range for {self.num_domains} domains")
        self.domain = domain

    def forward(self, x: Tensor, domain: int | Tensor | None = None) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected 4D input (got {x.dim()}D input)")
        domain = self.batch_domains if domain is None else domain
        if isinstance(domain, Tensor):
            return self._per_sample(x, domain)
        if domain is not None and not 0 <= domain < self.num_domains:
            raise ValueError(f"domain {domain} out of range for {self.num_domains} domains")
        return self._normalize(x, self.domain if domain is None else domain)

    def _per_sample(self, x: Tensor, ids: Tensor) -> Tensor:
        """Each domain's samples normalized by their own statistics (one batch_norm call per domain present)."""
        if ids.shape != (x.shape[0],):
            raise ValueError(f"expected one domain id per sample ({x.shape[0]}), got shape {tuple(ids.shape)}")
        groups = self._groups(ids)
        if groups and not (groups[0][0] >= 0 and groups[-1][0] < self.num_domains):
            raise ValueError(f"domain ids {[d for d, _ in groups]} out of range for {self.num_domains} domains")
        if len(groups) == 1:
            return self._normalize(x, groups[0][0])
        out = torch.zeros_like(x)
        for d, idx in groups:
            out = out.index_copy(0, idx, self._normalize(x.index_select(0, idx), d))
        return out

    @staticmethod
    def _groups(ids: Tensor) -> list[tuple[int, Tensor | None]]:
        """(domain, positions of its samples) per domain present, in domain order. Ids from a domain loader carry
        their grouping (data/domains.py: `domain_order`, positions domain by domain, and `domain_counts`, counted on
        the host once an epoch): sliced, nothing read. Bare ids are read (unique, nonzero: a host sync on a GPU)."""
        counts = getattr(ids, "domain_counts", None)
        if counts is not None:
            starts = [sum(counts[:d]) for d in range(len(counts))]
            return [(d, ids.domain_order[s : s + n]) for d, (s, n) in enumerate(zip(starts, counts)) if n]
        present = torch.unique(ids).tolist()
        if len(present) == 1:
            return [(present[0], None)]
        return [(d, (ids == d).nonzero().squeeze(1)) for d in present]

    def _normalize(self, x: Tensor, domain: int) -> Tensor:
        stats = self.domains[domain]
        factor = 0.0
        if self.training and self.momentum is None:  # cumulative average: the count kept on the host
            factor = 1.0 / count_batch(stats)
        elif self.training:
            stats.num_batches_tracked.add_(1)
            factor = self.momentum
        return F.batch_norm(
            x, stats.running_mean, stats.running_var, self.weight, self.bias, self.training, factor, self.eps
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_domains={self.num_domains}, eps={self.eps}, momentum={self.momentum}"


def set_domain(model: nn.Module, domain: int) -> None:
    """Make `domain` active in every SeparateBatchNorm2d of `model`."""
    for m in model.modules():
        if isinstance(m, SeparateBatchNorm2d):
            m.set_domain(domain)


@contextmanager
def use_domain(model: nn.Module, domain: int):
    """`with use_domain(model, 1): model(target_batch)` - every SeparateBatchNorm2d uses domain 1 inside."""
    layers = [m for m in model.modules() if isinstance(m, SeparateBatchNorm2d)]
    saved = [m.domain for m in layers]
    for m in layers:
        m.set_domain(domain)
    try:
        yield model
    finally:
        for m, d in zip(layers, saved):
            m.domain = d


def _route(module: nn.Module, args: tuple, kwargs: dict):
    domain = kwargs.pop("domain", None)
    if len(args) > 1:
        args, domain = args[:1], args[1]
    for m in module.modules():
        if isinstance(m, SeparateBatchNorm2d):
            m.batch_domains = domain
    return args, kwargs


def _clear(module: nn.Module, args: tuple, kwargs: dict, output):
    for m in module.modules():
        if isinstance(m, SeparateBatchNorm2d):
            m.batch_domains = None


def route_domains(model: nn.Module) -> nn.Module:
    """Let `model(x, domain_ids)` (or `model(x, domain=ids)`) hand per-sample domain ids to every
    SeparateBatchNorm2d for that forward; models without Separate BN ignore them (shared BN sees every domain).
    The model's own forward keeps its one-input signature and its state_dict is unchanged."""
    model.register_forward_pre_hook(_route, with_kwargs=True)
    model.register_forward_hook(_clear, with_kwargs=True)
    return model
