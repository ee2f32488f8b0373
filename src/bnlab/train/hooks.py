"""What `fit` runs besides training: hooks watch the model from outside and add to the epoch's row.

The loop calls each hook at its evaluation (`on_eval`) and, every `every_n_batches` training batches, `on_batch`;
the checkpoint keeps each hook's `state_dict` under its `name`; the runner lets it add to summary.json
(`on_finish`). The BN health monitor is one (diagnostics/monitor_hook.py); the loop does not know which hooks run.
"""

from __future__ import annotations

from torch import nn


class Hook:
    name = "hook"  # its key in the checkpoint's hook states
    every_n_batches = 0  # on_batch after every n-th training batch of an epoch (0 = never)

    def on_batch(self, model: nn.Module) -> dict:
        """Metrics logged (W&B) at this step, between evaluations."""
        return {}

    def on_eval(self, model: nn.Module, data, row: dict, epoch: int) -> dict:
        """Columns for the epoch's row, after validation (`row` holds its metrics so far); `epoch` counts from 1."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def on_finish(self, summary: dict) -> None:
        """Add to summary.json when the run ends (completed, diverged or failed; rank 0 only)."""
