"""BN health as a PyTorch Lightning callback (`pip install bnlab[lightning]`).

    from bnlab.diagnostics.lightning_callback import BNHealthCallback
    trainer = L.Trainer(callbacks=[BNHealthCallback(every_n_steps=500)])

Every `every_n_steps` optimizer steps it runs `bnlab.diagnostics.diagnose` on the LightningModule with the last
training batches and the first validation batches (`val_data`, or the trainer's validation dataloader) and logs
the flat `health/*` metrics to the trainer's loggers (W&B, TensorBoard, CSV: whatever the Trainer logs to), else
prints them. Events are kept in `callback.events`.

This module imports without Lightning installed; building the callback then raises an ImportError that says how to
install it. The logic is in `_HealthCallbackLogic` (no Lightning dependency), so it is tested either way.
"""

from __future__ import annotations

from torch.utils.data import DataLoader

from bnlab.diagnostics.diagnose import BNHealthHook

try:  # Lightning 2.x, then the older package name
    from lightning.pytorch import Callback as _Callback

    LIGHTNING = True
except ImportError:
    try:
        from pytorch_lightning import Callback as _Callback

        LIGHTNING = True
    except ImportError:
        _Callback, LIGHTNING = object, False

INSTALL_HINT = "BNHealthCallback needs PyTorch Lightning: pip install 'bnlab[lightning]' (or pip install lightning)"


class _HealthCallbackLogic:
    """What the callback does, written against the few trainer/module attributes it uses."""

    def __init__(self, val_data=None, every_n_steps: int = 500, loss_fn=None, config=None, **overrides):
        self.val_data, self.every_n_steps, self.loss_fn = val_data, every_n_steps, loss_fn
        self.config, self.overrides = config, overrides
        self.hook: BNHealthHook | None = None
        self.events: list[dict] = []

    def _val(self, trainer):
        if self.val_data is not None:
            return self.val_data
        loaders = getattr(trainer, "val_dataloaders", None)
        if isinstance(loaders, list | tuple) and loaders and isinstance(loaders[0], DataLoader):
            loaders = loaders[0]  # several validation dataloaders: the first
        if loaders is None:
            raise ValueError("BNHealthCallback: give val_data=..., or a validation dataloader to the Trainer")
        return loaders

    def _log(self, trainer):
        def log(metrics: dict, step: int) -> None:
            loggers = list(getattr(trainer, "loggers", None) or [])
            for lg in loggers:
                lg.log_metrics(metrics, step=trainer.global_step)
            if not loggers:
                print(f"[bn-health] step {step}: {metrics}")

        return log

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.hook is None:
            self.hook = BNHealthHook(
                pl_module,
                self._val(trainer),
                every=self.every_n_steps,
                log=self._log(trainer),
                loss_fn=self.loss_fn,
                config=self.config,
                **self.overrides,
            )
        report = self.hook.step(trainer.global_step, batch)
        if report is not None:
            self.events += [{**e, "step": trainer.global_step} for e in report.events]


class BNHealthCallback(_HealthCallbackLogic, _Callback):
    """Lightning callback: BN health every `every_n_steps` steps (see the module docstring)."""

    def __init__(self, val_data=None, every_n_steps: int = 500, loss_fn=None, config=None, **overrides):
        if not LIGHTNING:
            raise ImportError(INSTALL_HINT)
        _HealthCallbackLogic.__init__(self, val_data, every_n_steps, loss_fn, config, **overrides)
