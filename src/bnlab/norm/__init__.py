"""Normalization layers and the one factory every model uses to build them."""

from bnlab.norm.factory import NORMS, build_norm

__all__ = ["NORMS", "build_norm"]
