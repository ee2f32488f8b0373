"""Weights & Biases: offline by default; WANDB_MODE (if set) or logger.mode picks online/offline/disabled.

One group per study; job_type = the arm (`arm`, else the swept values other than the seed); a readable name (arm
and swept values, then the seed); tags = the swept keys' values (`norm.nbs=8`, `seed=1`), never plumbing such as
out_dir=...; the resolved config logged. metrics.csv is the source of truth and W&B follows it:

- The W&B run id is `<study>-<config hash>-<nonce>`, the nonce drawn once per run directory and kept with the
  labels in <run_dir>/wandb.json: a resume (same directory) continues the same W&B run, while the same config
  trained in another directory (another machine) is another W&B run and never resumes, or corrupts, this one.
- On resume the epochs already in the run's history (= metrics.csv) are replayed into the W&B run (those it
  lacks: online, the ones after its last step; offline, all), and in offline mode the earlier attempts' offline
  folders of the same id are removed: a killed attempt (kill -9 leaves only a header) never costs history, and
  one run id keeps one offline folder holding the whole history.
- `bnlab sync <study>` rebuilds any run's W&B run from its metrics.csv and summary.json the same way.

Upload offline runs with `wandb sync <run_dir>/wandb/offline-run-*`.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
from pathlib import Path

from omegaconf import OmegaConf

from bnlab.utils.io import atomic_write_json, read_json

MODES = ("online", "offline", "disabled")

# overrides that say where/how a run is launched or watched, not what it is: never a tag or part of a name
PLUMBING = ("out_dir", "logger", "device", "experiment", "scale", "hydra", "train.resume", "train.progress")
PLUMBING += ("train.retry_failed",)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _plumbing(key: str) -> bool:
    return any(key == p or key.startswith((p + ".", p + "/")) for p in PLUMBING)


def run_labels(cfg, overrides: list[str] | None = None, swept: list[str] | None = None) -> dict:
    """W&B name, job_type and tags of a run, from its Hydra overrides (`key=value`) and the keys its sweep swept
    (None: every override that is not plumbing counts, as for a single run)."""
    chosen = {_key(o): o.split("=", 1)[1] if "=" in o else "" for o in overrides or []}
    keys = [k for k in chosen if not _plumbing(k) and (swept is None or k in swept)]
    arm = cfg.get("arm")
    values = [f"{k}={chosen[k]}" for k in keys if k != "seed" and not (arm and k.startswith("arm/"))]
    job_type = str(arm) if arm else (" ".join(values) if swept is not None else "") or "run"
    name = " ".join([*([str(arm)] if arm else []), *values, f"seed={cfg.get('seed')}"])
    tags = [f"{k}={chosen[k]}"[:64] for k in keys]  # W&B caps a tag at 64 characters
    return {"name": name[:128], "job_type": job_type[:64], "tags": tags}


def wandb_identity(cfg, run_dir: str | Path, labels: dict | None = None) -> dict:
    """<run_dir>/wandb.json: the W&B id (config hash + a nonce of this run directory) and labels, made on first
    use and kept, so every attempt and `bnlab sync` of this directory log to the same W&B run."""
    from bnlab.train.run_dir import run_id

    path = Path(run_dir) / "wandb.json"
    stored = read_json(path)
    if stored and stored.get("id"):
        return stored
    made = {"id": f"{cfg.study}-{run_id(cfg)}-{secrets.token_hex(3)}", **(labels or run_labels(cfg))}
    atomic_write_json(path, made)
    return made


def _loggable(row: dict) -> dict:
    return {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}


class WandbLogger:
    def __init__(
        self,
        cfg,
        run_dir,
        labels: dict | None = None,
        enabled: bool = True,
        history: list[dict] | None = None,
        mode: str | None = None,
    ):
        lcfg = cfg.logger
        self.mode = mode or os.environ.get("WANDB_MODE") or lcfg.mode
        self.run = None
        self.replayed = 0
        if self.mode == "disabled" or not enabled:  # not enabled: a non-zero rank of a multi-process run
            return
        import wandb

        ident = wandb_identity(cfg, run_dir, labels)
        if self.mode == "offline":
            self._drop_offline_attempts(Path(run_dir), ident["id"], bool(history))
        self.run = wandb.init(
            project=lcfg.project,
            entity=lcfg.get("entity"),
            group=lcfg.get("group") or str(cfg.study),
            job_type=ident["job_type"],
            tags=list(lcfg.get("tags") or []) + list(ident["tags"]),
            name=ident["name"],
            id=ident["id"],
            resume="allow",
            dir=str(run_dir),
            mode=self.mode,
            config=OmegaConf.to_container(cfg, resolve=True),
            settings=wandb.Settings(silent=True),
        )
        self.replay(history or [])

    @staticmethod
    def _drop_offline_attempts(run_dir: Path, wandb_id: str, replaying: bool) -> None:
        """Earlier offline folders of this id: superseded, since the new attempt replays the whole history (a fresh
        start, no history, has nothing to replay: its old folders are of a run that starts over, also superseded)."""
        for old in sorted((run_dir / "wandb").glob(f"offline-run-*-{wandb_id}")):
            shutil.rmtree(old, ignore_errors=True)
            print(f"[bnlab] W&B: {old.name} superseded (this attempt {'replays' if replaying else 'restarts'} it)")

    def replay(self, history: list[dict]) -> None:
        """Log the rows of earlier epochs the W&B run does not have yet (steps from its next step on)."""
        if self.run is None or not history:
            return
        start = int(self.run.step or 0)
        for row in history:
            step = int(row.get("step", 0))
            if step >= start:
                self.run.log(_loggable(row), step=step)
                self.replayed += 1

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


def sync_run(run_dir: str | Path) -> str:
    """Rebuild one run directory's W&B run from metrics.csv and summary.json (WANDB_MODE or logger.mode, offline
    when disabled): returns a line saying what was written."""
    import pandas as pd

    from bnlab.train.run_dir import RunDir

    rd = RunDir(Path(run_dir))
    cfg = OmegaConf.load(rd.config)
    mode = os.environ.get("WANDB_MODE") or cfg.logger.get("mode") or "offline"
    mode = "offline" if mode == "disabled" else mode  # a run trained without W&B: sync writes its offline run
    rows = pd.read_csv(rd.metrics).to_dict("records") if rd.metrics.exists() else []
    summary = rd.summary() or {}
    logger = WandbLogger(cfg, rd.root, history=rows, mode=mode)
    status = summary.get("status", "interrupted")
    logger.summary({"status": status, **(summary.get("final") or {})})
    wandb_id = json.loads((rd.root / "wandb.json").read_text())["id"]
    logger.finish(failed=status != "completed")
    return f"{rd.root}: {len(rows)} epochs ({status}) -> W&B run {wandb_id} ({logger.mode})"
