"""A trained run read back from its directory: its config, the run's own builders and its final weights.

`bnlab health RUN_DIR` (diagnostics/report.py) and analyses that measure trained nets (experiments/hessian) share it,
so both see the data split, model and loss the run trained with.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from bnlab.train.build import Built, build, resolve_device
from bnlab.train.checkpoint import load_model_state


def run_device(cfg) -> str:
    """Where a trained run is measured: the device it trained on (its `device`, `auto` resolved here), or the
    CPU where this machine has no CUDA (a GPU run analysed on a laptop)."""
    name = str(cfg.get("device", "cpu"))
    return resolve_device(name) if name == "auto" or torch.cuda.is_available() else "cpu"


def load_run(run_dir: Path, overrides=(), device: str | None = "cpu") -> tuple:
    """(config, Built) of the run in `run_dir`, its model holding checkpoint.pt's weights. `overrides`: dotlist
    entries merged over the run's config.yaml (e.g. eval.batch_size=64); `device=None`: the run's own
    (`run_device`)."""
    run_dir = Path(run_dir)
    config = run_dir / "config.yaml"
    if not config.exists():
        raise FileNotFoundError(
            f"{config} not found: pass a bnlab run directory, or a checkpoint with --model module:callable"
        )
    cfg = OmegaConf.merge(OmegaConf.load(config), OmegaConf.from_dotlist(list(overrides)))
    torch.manual_seed(int(cfg.seed))  # the run's seed before its builders, as when it trained
    job: Built = build(cfg, run_device(cfg) if device is None else device)
    load_model_state(job.model, run_dir / "checkpoint.pt")
    return cfg, job
