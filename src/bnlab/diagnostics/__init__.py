"""Diagnostics that watch training from outside the loop: the BN health monitor."""

from bnlab.diagnostics.health import BNHealthMonitor, bn_layers, build_monitor

__all__ = ["BNHealthMonitor", "bn_layers", "build_monitor"]
