"""Hydra entry point for one run: `python -m bnlab.train [overrides]` (config: conf/train.yaml)."""

from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from bnlab import CONF_DIR
from bnlab.config_errors import ConfigError
from bnlab.data.errors import DatasetNotFoundError
from bnlab.train.checkpoint import CheckpointError
from bnlab.train.outcome import TERMINATED_EXIT, Terminated


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    from bnlab.train.loop import run
    from bnlab.train.wandb_logger import run_labels

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    labels = run_labels(cfg, list(hydra_cfg.overrides.task), swept_keys(hydra_cfg) if multirun else None)
    try:
        summary = run(cfg, raise_on_failure=not multirun, labels=labels)
    except Terminated:  # SIGTERM: W&B flushed, last checkpoint kept; the same command (or a requeue) resumes
        print(f"[bnlab] terminated by SIGTERM: exit {TERMINATED_EXIT}; rerun the same command to resume", flush=True)
        sys.exit(TERMINATED_EXIT)
    except (ConfigError, DatasetNotFoundError, CheckpointError) as e:
        if multirun:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    final = (summary or {}).get("final", {})
    return final.get("val_err_running")


def swept_keys(hydra_cfg) -> list[str]:
    """The keys this job's sweep varies: the study grid's (hydra.sweeper.params) and, set by the sweep callback in
    BNLAB_SWEPT_KEYS, those swept on the command line (`norm.nbs=4,32,256`), which a job's config no longer shows."""
    keys = list((hydra_cfg.sweeper.get("params") or {}).keys())
    keys += [k for k in os.environ.get("BNLAB_SWEPT_KEYS", "").split(",") if k]
    return list(dict.fromkeys(keys))


if __name__ == "__main__":
    main()
