"""Hydra entry point for one run: `python -m bnlab.train [overrides]` (config: conf/train.yaml)."""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from bnlab import CONF_DIR
from bnlab.config_errors import ConfigError
from bnlab.data.errors import DatasetNotFoundError
from bnlab.train.checkpoint import CheckpointError


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    from bnlab.train.loop import run

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    tags = [o[:64] for o in hydra_cfg.overrides.task] if multirun else None  # W&B caps tags at 64 chars
    try:
        summary = run(cfg, raise_on_failure=not multirun, tags=tags)
    except (ConfigError, DatasetNotFoundError, CheckpointError) as e:
        if multirun:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    final = (summary or {}).get("final", {})
    return final.get("val_err_running")


if __name__ == "__main__":
    main()
