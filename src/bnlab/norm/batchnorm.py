"""BatchNorm2d with the normalization batch size (NBS) as one knob: plain, Ghost or Sync BN.

Wu, "Devils in BatchNorm": NBS, the number of samples whose statistics normalize each other, need not equal the
SGD batch. With a per-device batch B:

- ``nbs=None`` or ``nbs == B``: plain BN (Ioffe & Szegedy 2015), one ``F.batch_norm`` call like nn.BatchNorm2d.
- ``nbs < B``: Ghost BN (Hoffer et al. 2017, "Train longer, generalize better", sec. 4): the batch is split into
  ``B / nbs`` groups normalized separately, by PyTorch's fused batch-norm kernels on slices of the batch (see
  bnlab.norm.ghost for the implementations and their measured cost).
- ``nbs > B``: Sync BN over ``nbs / B`` consecutive ranks (see bnlab.norm.sync).

The layer also chooses which statistics normalize in training (``train_stats``) and whether the EMA is updated
(``update_stats``), the "10 ways to do BatchNorm" axes of the talk.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bnlab.norm.validate as check
from bnlab.config_errors import ConfigError
from bnlab.norm.batch_count import batches_tracked, count_batch
from bnlab.norm.ghost import GHOST_LAYOUTS, ghost_batch_norm, ghost_groups
from bnlab.norm.layer import NormLayer
from bnlab.norm.sync import consecutive_ranks_group, ranks_for_nbs, sync_batch_norm

TRAIN_STATS = ("batch", "running")


class BatchNorm2d(nn.BatchNorm2d, NormLayer, config_name="batch"):
    """Drop-in nn.BatchNorm2d (same leading arguments, same state_dict keys) with an NBS knob.

    Args:
        num_features: channels C.
        eps: added to the variance before the square root.
        momentum: PyTorch convention, the weight of the NEW batch in the running averages:
            ``running = (1 - momentum) * running + momentum * batch``, i.e. EMA decay lambda = 1 - momentum
            (the talk's lambda = 0.9 is momentum = 0.1). ``None`` = cumulative average, as in PyTorch.
        affine: learnable per-channel weight and bias.
        nbs: normalization batch size. None or the per-device batch: plain BN; smaller: Ghost BN over
            ``B / nbs`` groups (must divide the batch); larger: Sync BN over ``nbs / B`` processes.
        ghost_layout: "contiguous" (group g = samples [g * nbs, (g + 1) * nbs)) or "strided" (sample i in
            group i % (B / nbs), Keras' virtual_batch_size layout; zero-copy, so faster).
        train_stats: "batch" or "running": which statistics normalize in training mode, independently of
            .train() / .eval() (eval mode always uses the running statistics).
        update_stats: False = training mode never touches the running statistics or num_batches_tracked (e.g. a
            GAN discriminator on fake batches; see also `no_stats_update`).
        process_group: the Sync BN group; by default derived from nbs and the world size (consecutive ranks).

    Running statistics are the same EMA as nn.BatchNorm2d (unbiased batch variance); in Ghost mode the batch
    statistic is the average over groups of each group's mean and unbiased variance. Statistics accumulate in
    float32 under fp16/bf16 autocast. Arguments after `affine` are keyword-only: nn.BatchNorm2d's fifth
    positional argument is track_running_stats, which this layer always has.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        *,
        nbs: int | None = None,
        ghost_layout: str = "contiguous",
        train_stats: str = "batch",
        update_stats: bool = True,
        process_group=None,
        device=None,
        dtype=None,
    ):
        super().__init__(num_features, eps, momentum, affine, track_running_stats=True, device=device, dtype=dtype)
        if nbs is not None and (not isinstance(nbs, int) or isinstance(nbs, bool) or nbs <= 0):
            raise ValueError(f"nbs must be a positive integer or None, got {nbs!r}")
        if ghost_layout not in GHOST_LAYOUTS:
            raise ValueError(f"ghost_layout must be one of {GHOST_LAYOUTS}, got {ghost_layout!r}")
        if train_stats not in TRAIN_STATS:
            raise ValueError(f"train_stats must be one of {TRAIN_STATS}, got {train_stats!r}")
        self.nbs, self.ghost_layout = nbs, ghost_layout
        self.train_stats, self.update_stats = train_stats, bool(update_stats)
        self.process_group = process_group
        self._sync_ranks: int | None = None
        self.virtual = None  # set by bnlab.norm.virtual.virtual_bn while a reference batch is in use

    # --- what bnlab asks of a norm layer (norm/layer.py) ---
    is_batchnorm = has_running_stats = True

    @classmethod
    def check_config(cls, cfg) -> None:
        """Only the keys `cfg.norm` holds: a subclass with fewer keys inherits this check, and a key left out takes
        its constructor default, which is valid (the registry refuses a missing key that has no default)."""
        norm = cfg.norm
        check.check_nbs(cfg, sync=True)
        if "momentum" in norm:
            check.momentum(norm, allow_none=True)
        if "train_stats" in norm:
            check.one_of(norm, "train_stats", TRAIN_STATS)
        if "update_stats" in norm and not isinstance(norm.get("update_stats"), bool):
            raise ConfigError("norm.update_stats", f"must be true or false, got {norm.get('update_stats')!r}")

    @contextmanager
    def batch_statistics(self):
        saved, self.train_stats = self.train_stats, "batch"
        try:
            yield
        finally:
            self.train_stats = saved

    def why_not_stackable(self) -> str | None:
        if self.process_group is not None:
            return "Sync BN communicates across processes"
        if self.nbs is not None:
            return f"nbs={self.nbs} (Ghost / Sync BN) runs kernels without a vmap rule; use nbs=None (plain BN)"
        if self.virtual is not None:
            return "Virtual BN's reference statistics are held by the layer, shared by every model"
        return super().why_not_stackable()

    def extra_repr(self) -> str:
        extra = [f"nbs={self.nbs}"] if self.nbs is not None else []
        if self.nbs is not None:
            extra.append(f"ghost_layout={self.ghost_layout}")
        if self.train_stats != "batch":
            extra.append(f"train_stats={self.train_stats}")
        if not self.update_stats:
            extra.append("update_stats=False")
        return ", ".join([super().extra_repr(), *extra])

    def sync_group(self, batch_size: int):
        """The process group for Sync BN, or None when this batch is normalized within the process."""
        if self.process_group is not None:
            return self.process_group
        if self.nbs is None or self.nbs <= batch_size:
            return None
        if self._sync_ranks is None:  # derived once, so a smaller last batch keeps the same group
            self._sync_ranks = ranks_for_nbs(self.nbs, batch_size)
        return consecutive_ranks_group(self._sync_ranks)

    def batch_forward(self, x: Tensor, update: bool) -> Tensor:
        """Normalize with batch statistics (plain, Ghost or Sync); move the EMA toward them when `update`."""
        factor = self.momentum
        if factor is None and update:  # cumulative moving average, as nn.BatchNorm2d (the count held on the host)
            factor = 1.0 / batches_tracked(self)
        rm, rv = (self.running_mean, self.running_var) if update else (None, None)
        group = self.sync_group(x.shape[0])
        if group is not None:
            return sync_batch_norm(x, self.weight, self.bias, rm, rv, factor, self.eps, group)
        groups = ghost_groups(self.nbs, x.shape[0])
        if groups > 1:
            return ghost_batch_norm(x, self.weight, self.bias, rm, rv, factor, self.eps, groups, self.ghost_layout)
        return F.batch_norm(x, rm, rv, self.weight, self.bias, True, factor, self.eps)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        if self.virtual is not None:
            return self.virtual(self, x)
        if self.update_stats:  # momentum=None weighs by the count: kept on the host too (norm/batch_count.py)
            count_batch(self) if self.momentum is None else self.num_batches_tracked.add_(1)
        if self.train_stats == "batch":
            return self.batch_forward(x, self.update_stats)
        # running statistics normalize; the EMA still follows the batch (costs one extra statistics pass)
        mean, var = self.running_mean.clone(), self.running_var.clone()  # values before this step's update
        if self.update_stats:
            with torch.no_grad():
                self.batch_forward(x, update=True)
        return F.batch_norm(x, mean, var, self.weight, self.bias, False, 0.0, self.eps)


@contextmanager
def no_stats_update(model: nn.Module):
    """Batch statistics without EMA updates in every bnlab BatchNorm2d of `model` (GAN fake batches)."""
    layers = [m for m in model.modules() if isinstance(m, BatchNorm2d)]
    saved = [m.update_stats for m in layers]
    for m in layers:
        m.update_stats = False
    try:
        yield model
    finally:
        for m, s in zip(layers, saved):
            m.update_stats = s
