"""A study's figures and tables in W&B: one run per study and preset, in the study's group (where its training runs
are), holding every figure as a wandb.Image and every table as a wandb.Table. Offline by default, like the runs
(WANDB_MODE or conf/logger/wandb.yaml's mode); `wandb sync` uploads it later."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from bnlab import CONF_DIR


def log_figures(study: str, preset: str, written: list[Path], wandb_dir: Path) -> str:
    """Log the .png figures and .csv tables among `written`; says which W&B run (and mode) holds them."""
    import wandb

    logger = OmegaConf.load(Path(CONF_DIR) / "logger" / "wandb.yaml")
    mode = os.environ.get("WANDB_MODE") or logger.mode
    if mode == "disabled":
        return "W&B disabled (WANDB_MODE): figures not logged"
    wandb_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=logger.project,
        entity=logger.get("entity"),
        group=logger.get("group") or study,  # the study's runs' group
        job_type="figures",
        name=f"{study} figures ({preset})",
        id=f"figures-{study}-{preset}",
        resume="allow",
        dir=str(wandb_dir),
        mode=mode,
        config={"study": study, "preset": preset},
        settings=wandb.Settings(silent=True),
    )
    row = {}
    for path in sorted(Path(p) for p in written):
        if path.suffix == ".png":
            row[f"figures/{path.stem}"] = wandb.Image(str(path))
        elif path.suffix == ".csv":
            row[f"tables/{path.stem}"] = wandb.Table(dataframe=pd.read_csv(path))
    run.log(row)
    run.finish()
    where = f" (offline: `wandb sync {wandb_dir}/wandb/offline-run-*`)" if mode == "offline" else ""
    return f"{len(row)} figures and tables -> W&B run figures-{study}-{preset}, group {study}{where}"
