"""Fine-tuning: start from another run's checkpoint, keep BN or convert it to Frozen BN, then train as usual.

Wu, "Devils in BatchNorm" (training/fine-tuning with data from a different source): with small fine-tuning batches
BN's batch statistics are noisy and its EMA drifts; Frozen BN replaces every BN layer by a constant affine made
from the trained statistics and affine (torchvision's FrozenBatchNorm2d: nothing in it learns). Optionally the
statistics are first recomputed on the fine-tuning data (Adaptive BN, Li et al. 2016), so they are frozen at the
target domain's values rather than the source's. The loop only sees a model; the choice is `finetune.*`:

    python -m bnlab.train finetune.from=runs/<study>/<hash> finetune.norm=frozen domains=shifted \
        domains.train_on=target train.batch_size=4

`finetune.from` is a run directory, its checkpoint.pt, or `arm:<name>`: the completed run of the same study with
that arm, seed and preset (how a sweep names a run trained earlier in the same sweep).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import yaml
from torch import nn

from bnlab.config_errors import ConfigError
from bnlab.norm import adaptive_bn, freeze_batchnorm
from bnlab.train.checkpoint import CheckpointError, load_model_state
from bnlab.utils.io import read_json

NORM_CHOICES = ("keep", "frozen")


def validate_finetune(cfg) -> None:
    ft = cfg.get("finetune") or {}
    if ft.get("norm", "keep") not in NORM_CHOICES:
        raise ConfigError("finetune.norm", f"got {ft.get('norm')!r}", allowed=NORM_CHOICES)
    if not isinstance(ft.get("recompute_stats", False), bool):
        raise ConfigError("finetune.recompute_stats", f"must be true or false, got {ft.get('recompute_stats')!r}")
    source = ft.get("from")
    if source is not None and not (isinstance(source, str) and source):
        raise ConfigError("finetune.from", f"must be a run directory, a checkpoint or arm:<name>, got {source!r}")


SWEEP_PLAN_ENV = "BNLAB_SWEEP_PLAN"  # set by a sweep's up-front check (bnlab.plan): every job's arm and run dir
DEPENDENCY_WAIT_ENV = "BNLAB_DEPENDENCY_WAIT"  # seconds to wait for a dependency of the sweep that has not started


def _completed_runs_of_arm(cfg, arm: str, study_dir: Path) -> list[Path]:
    found = []
    for config_path in sorted(study_dir.glob("*/config.yaml")):
        other = yaml.safe_load(config_path.read_text()) or {}
        same = (other.get("arm"), other.get("seed"), other.get("preset")) == (arm, cfg.seed, cfg.get("preset"))
        if same and (read_json(config_path.parent / "summary.json") or {}).get("status") == "completed":
            found.append(config_path.parent)
    return found


def _sweep_dependency(cfg, arm: str) -> Path | None:
    """The run directory of `arm` (same seed and preset) when this run is a job of a sweep that also trains it."""
    for job in json.loads(os.environ.get(SWEEP_PLAN_ENV) or "[]"):
        if (job.get("arm"), job.get("seed"), job.get("preset")) == (arm, cfg.seed, cfg.get("preset")):
            return Path(job["run_dir"])
    return None


def _run_of_arm(cfg, arm: str) -> Path:
    """The completed run of `arm`. Under a parallel launcher the sweep's job training that arm may still be running
    (or not started): wait for it while it runs (and up to BNLAB_DEPENDENCY_WAIT seconds, default 1800, for it to
    start); if it failed, or no sweep job trains it, fail naming the arm."""
    from bnlab.train.run_dir import RunDir

    study_dir = Path(cfg.out_dir) / str(cfg.study)
    where = f"of arm {arm!r} with seed {cfg.seed} and preset {cfg.get('preset')} under {study_dir}"
    deadline, told = time.time() + float(os.environ.get(DEPENDENCY_WAIT_ENV, 1800)), False
    while True:
        found = _completed_runs_of_arm(cfg, arm, study_dir)
        if len(found) == 1:
            return found[0]
        if found:
            raise ConfigError("finetune.from", f"arm:{arm}: {len(found)} completed runs {where}: {found}")
        pending = _sweep_dependency(cfg, arm)
        state = RunDir(pending).state() if pending is not None else None
        if state is None or state in ("failed", "diverged") or (state != "running" and time.time() > deadline):
            what = f"its run {pending} is {state}" if state else "no completed run"
            raise ConfigError("finetune.from", f"arm:{arm}: {what} {where} (train that arm first)")
        if not told:
            print(f"[bnlab] waiting for arm {arm!r} ({pending}, {state}) to finish", flush=True)
            told = True
        time.sleep(2)


def resolve_checkpoint(cfg, source: str) -> Path:
    path = _run_of_arm(cfg, source[4:]) if source.startswith("arm:") else Path(source)
    path = path / "checkpoint.pt" if path.is_dir() else path
    if not path.is_file():
        raise ConfigError("finetune.from", f"{source!r}: no checkpoint at {path}")
    return path


def statistics_batches(loader, batch_size: int):
    """The loader's images in their stored order, preprocessed without augmentation, in batches of `batch_size`
    (not the small fine-tuning batches: in the Precise-BN pass upstream layers normalize with batch statistics)."""
    for start in range(0, len(loader.images), batch_size):
        yield loader.transform(loader.images[start : start + batch_size])


def prepare_finetune(model: nn.Module, cfg, data) -> dict | None:
    """Load `finetune.from` into `model` (in place) and apply `finetune.norm`; None when not fine-tuning.
    Returns what was done, for summary.json."""
    ft = cfg.get("finetune") or {}
    if not ft.get("from"):
        return None
    path = resolve_checkpoint(cfg, str(ft["from"]))
    try:
        load_model_state(model, path)
    except CheckpointError as e:  # a run of another model: the key that chose it is named
        raise ConfigError("finetune.from", f"{e}; fine-tune a run of the same model.* and norm") from None
    done = {"from": str(path), "norm": ft.get("norm", "keep"), "recompute_stats": bool(ft.get("recompute_stats"))}
    if done["recompute_stats"]:  # Adaptive BN on the fine-tuning images, in batches of eval.batch_size
        batches = statistics_batches(data.train, int(cfg.eval.get("batch_size") or cfg.train.batch_size))
        done["recompute_samples"] = adaptive_bn(model, batches, int(cfg.eval.get("precise_samples", 8192)))
    if done["norm"] == "frozen":
        freeze_batchnorm(model, trainable_affine=False)  # the talk's "constant affine layers"
    return done
