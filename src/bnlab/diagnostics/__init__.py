"""Diagnostics that watch training from outside the loop: the BN health monitor, for bnlab's runs and any model.

`diagnose(model, train_batches, val_batches)` -> HealthReport; `BNHealthHook` for a plain training loop;
`bnlab.diagnostics.lightning_callback.BNHealthCallback` for PyTorch Lightning (`pip install bnlab[lightning]`).
"""

from bnlab.diagnostics.diagnose import ADVICE, BNHealthHook, HealthInputError, HealthReport, diagnose
from bnlab.diagnostics.health import BNHealthMonitor, HealthConfig, bn_layers, build_monitor

__all__ = [
    "ADVICE",
    "BNHealthHook",
    "BNHealthMonitor",
    "HealthConfig",
    "HealthInputError",
    "HealthReport",
    "bn_layers",
    "build_monitor",
    "diagnose",
]
