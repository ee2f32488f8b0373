"""Normalization layers and the one factory every model uses to build them."""

from bnlab.norm.batchnorm import BatchNorm2d, no_stats_update
from bnlab.norm.factory import NORMS, build_norm
from bnlab.norm.renorm import BatchRenorm2d

__all__ = ["NORMS", "BatchNorm2d", "BatchRenorm2d", "build_norm", "no_stats_update"]
