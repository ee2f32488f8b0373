"""bnlab's BN health monitor as a `fit` hook: checked at every evaluation, its events checkpointed and summarised."""

from __future__ import annotations

from bnlab.diagnostics.health import BNHealthMonitor, build_monitor
from bnlab.train.hooks import Hook


class MonitorHook(Hook):
    name = "health"

    def __init__(self, monitor: BNHealthMonitor):
        self.monitor = monitor
        self.every_n_batches = int(monitor.cfg.every_n_steps or 0)

    def on_batch(self, model) -> dict:  # running_var extremes between evaluations (no forward pass)
        return self.monitor.running_var_extremes(model)

    def on_eval(self, model, data, row: dict, epoch: int) -> dict:  # training batches: what the EMA tracks
        return self.monitor.check(model, data.train, row, epoch=epoch, val_batches=data.val)

    def state_dict(self) -> dict:
        return {"events": self.monitor.events}

    def load_state_dict(self, state: dict) -> None:
        self.monitor.events = state.get("events", [])

    def on_finish(self, summary: dict) -> None:
        summary.update(events=self.monitor.events, health=self.monitor.describe())
        print(f"[bnlab] {summary['health']}")


def health_hooks(cfg) -> list[MonitorHook]:
    """The monitor's hook when `health.enabled`, else none."""
    monitor = build_monitor(cfg)
    return [MonitorHook(monitor)] if monitor is not None else []
