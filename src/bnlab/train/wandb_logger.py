"""Weights & Biases: offline by default; WANDB_MODE (if set) or logger.mode picks online/offline/disabled.

One group per study, job_type = study, the resolved config logged, and the W&B run id derived from the run's
config hash, so a run resumed by the harness continues the same W&B run. Sync offline runs later with
`wandb sync <run_dir>/wandb/offline-run-*`.
"""

from __future__ import annotations

import os

from omegaconf import OmegaConf

MODES = ("online", "offline", "disabled")


class WandbLogger:
    def __init__(self, cfg, run_dir, run_id: str, tags: list[str] | None = None, enabled: bool = True):
        lcfg = cfg.logger
        self.mode = os.environ.get("WANDB_MODE") or lcfg.get("mode", "offline")
        self.run = None
        if self.mode == "disabled" or not enabled:  # not enabled: a non-zero rank of a multi-process run
            return
        import wandb

        self.run = wandb.init(
            project=lcfg.get("project", "bnlab"),
            entity=lcfg.get("entity"),
            group=lcfg.get("group") or str(cfg.study),
            job_type=str(cfg.study),
            tags=list(lcfg.get("tags") or []) + list(tags or []),
            name=f"{cfg.study}-{run_id}",
            id=f"{cfg.study}-{run_id}",
            resume="allow",
            dir=str(run_dir),
            mode=self.mode,
            config=OmegaConf.to_container(cfg, resolve=True),
            settings=wandb.Settings(silent=True),
        )

    def log(self, metrics: dict, step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def summary(self, summary: dict) -> None:
        if self.run is not None:
            for k, v in summary.items():
                if isinstance(v, int | float | str | bool):
                    self.run.summary[k] = v

    def finish(self, failed: bool = False) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)
            self.run = None
