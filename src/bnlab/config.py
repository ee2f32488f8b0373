"""Validate a composed config before anything is built: each error names the key and the allowed values."""

from __future__ import annotations

import difflib
import math
import netrc
import os
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from omegaconf import DictConfig, ListConfig, OmegaConf

from bnlab.config_errors import ConfigError

# sections whose keys are fixed by the YAML files (a group's own keys are checked against its constructor instead);
# a key added with `+` (`+train.epoch=5`) that no config file defines is refused like a misspelt one
FIXED_SECTIONS = ("", "train", "eval", "finetune", "health", "logger")
_GLOBAL_CONFIG_DIRS = ("experiment", "scale", "study_scale", "arm")  # `# @package _global_` files


def _positive_int(cfg, key: str, allow_none: bool = False) -> None:
    v = cfg
    for part in key.split("."):
        v = v.get(part) if v is not None else None
    if v is None and allow_none:
        return
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ConfigError(key, f"must be a positive integer, got {v!r}")


def _one_of(value, key: str, allowed) -> None:
    if value not in allowed:
        raise ConfigError(key, f"got {value!r}", allowed=sorted(allowed))


@lru_cache(maxsize=1)
def known_keys() -> dict[str, frozenset]:
    """{section: keys} any config file under conf/ defines for the fixed sections ('' = top level)."""
    from bnlab import CONF_DIR

    conf = Path(CONF_DIR)
    keys: dict[str, set] = {section: set() for section in FIXED_SECTIONS}

    def add(node) -> None:
        if isinstance(node, dict):
            keys[""].update(k for k in node if k not in ("defaults", "hydra"))
            for section in FIXED_SECTIONS[1:]:
                if isinstance(node.get(section), dict):
                    keys[section].update(node[section])

    top = OmegaConf.to_container(OmegaConf.load(conf / "train.yaml"))
    add(top)
    for entry in top.get("defaults", []):  # config groups: data, model, ..., experiment, scale
        if isinstance(entry, dict):
            keys[""].update(k.removeprefix("optional ") for k in entry if not k.startswith("override "))
    for sub in _GLOBAL_CONFIG_DIRS:
        for path in sorted((conf / sub).rglob("*.yaml")):
            add(OmegaConf.to_container(OmegaConf.load(path)) or {})
    for path in sorted((conf / "logger").glob("*.yaml")):
        keys["logger"].update(OmegaConf.load(path))
    return {section: frozenset(k) for section, k in keys.items()}


def check_unknown_keys(cfg) -> None:
    """A key no config file defines (added with `+`, e.g. +train.epoch=5) fails, with the nearest known key."""
    known = known_keys()
    for section in FIXED_SECTIONS:
        node = cfg if section == "" else cfg.get(section)
        if not isinstance(node, DictConfig):
            continue
        for key in node:
            if key in known[section]:
                continue
            full = f"{section}.{key}" if section else str(key)
            near = difflib.get_close_matches(str(key), sorted(known[section]), n=1)
            hint = f"; did you mean '{section + '.' if section else ''}{near[0]}'?" if near else ""
            raise ConfigError(full, f"unknown key (no config file defines it){hint}", allowed=sorted(known[section]))


def _wandb_key_available() -> bool:
    """W&B finds its API key in WANDB_API_KEY or in ~/.netrc (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def check_logger(cfg) -> None:
    from bnlab.train.wandb_logger import MODES

    env = os.environ.get("WANDB_MODE")
    if env and env not in MODES:
        raise ConfigError("logger.mode", f"environment variable WANDB_MODE={env!r} (it overrides logger.mode)", MODES)
    _one_of(cfg.logger.get("mode"), "logger.mode", MODES)
    if (env or cfg.logger.get("mode")) == "online" and not _wandb_key_available():
        raise ConfigError(
            "logger.mode",
            "online needs a W&B API key and none was found (WANDB_API_KEY or ~/.netrc): run `wandb login`, "
            "or log offline (logger.mode=offline, `wandb sync` later)",
        )


def check_device(cfg) -> str:
    """The device key's value. Whether this machine has CUDA is checked when the run starts (train.build's
    resolve_device), not here: a sweep for GPUs is validated on the machine that submits it (a SLURM login node)."""
    device = str(cfg.get("device", "auto"))
    if not (device in ("auto", "cpu") or device.startswith("cuda")):
        raise ConfigError("device", f"got {device!r}", allowed=("auto", "cpu", "cuda", "cuda:N"))
    return device


def check_finite(node, path: str = "") -> None:
    """No number in the config is nan or inf: `optim.lr=nan` would train, diverge and leave a run behind."""
    items = node.items() if isinstance(node, DictConfig) else enumerate(node) if isinstance(node, ListConfig) else ()
    for key, value in items:
        full = f"{path}.{key}" if path and isinstance(key, str) else f"{path}[{key}]" if path else str(key)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(full, f"must be a finite number, got {value!r}")
        check_finite(value, full)


def check_out_dir(cfg) -> None:
    """out_dir (and the study folder in it) must be folders or not exist yet: a regular file there is named here,
    not met as a NotADirectoryError when the run directory is read."""
    path = Path(str(cfg.out_dir)) / str(cfg.study)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            raise ConfigError("out_dir", f"{p} is a file, not a folder for run directories")
        if p.is_dir():
            return


def validate(cfg: DictConfig) -> None:
    from bnlab.data import DATASETS, SHARED_KEYS, validate_data_config
    from bnlab.data.samplers import SAMPLERS
    from bnlab.models import MODELS
    from bnlab.norm import NORMS, validate_norm
    from bnlab.train.evaluate import EVAL_MODES
    from bnlab.train.fast import check_fast_settings, fast_settings
    from bnlab.train.finetune import validate_finetune
    from bnlab.train.launch import processes as process_count
    from bnlab.train.losses import LOSSES
    from bnlab.train.optim import OPTIMIZERS, SCHEDULES

    # every group's name, and its keys against the constructor's signature (unknown keys fail here, named)
    DATASETS.check(cfg.data, shared=SHARED_KEYS)
    SAMPLERS.check(cfg.sampler)
    MODELS.check(cfg.model)
    NORMS.check(cfg.norm)
    OPTIMIZERS.check(cfg.optim)
    SCHEDULES.check(cfg.schedule, shared=("length_epochs",))  # read by Schedule itself
    LOSSES.check(cfg.loss)
    check_unknown_keys(cfg)
    check_finite(cfg)
    check_out_dir(cfg)
    check_logger(cfg)
    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError("seed", f"must be a non-negative integer, got {seed!r}")
    for m in cfg.eval.get("modes", []):
        _one_of(m, "eval.modes", EVAL_MODES)

    lr = cfg.optim.get("lr")
    if not isinstance(lr, int | float) or isinstance(lr, bool) or lr <= 0:
        raise ConfigError("optim.lr", f"must be a positive number, got {lr!r}")
    if float(cfg.optim.weight_decay) < 0:  # every conf/optim file sets it
        raise ConfigError("optim.weight_decay", f"must be >= 0, got {cfg.optim.weight_decay!r}")
    _positive_int(cfg, "train.batch_size")
    _positive_int(cfg, "train.epochs")
    _positive_int(cfg, "train.processes", allow_none=True)
    _positive_int(cfg, "train.accumulate", allow_none=True)  # micro-batches per optimizer step
    processes = process_count(cfg)  # the one reader of train.processes
    if cfg.train.batch_size % processes:
        raise ConfigError(
            "train.processes", f"{processes} processes do not split train.batch_size={cfg.train.batch_size}"
        )
    _positive_int(cfg, "train.batches_per_epoch", allow_none=True)
    _positive_int(cfg, "eval.batch_size", allow_none=True)
    _positive_int(cfg, "eval.ema_frozen_steps", allow_none=True)
    _positive_int(cfg, "data.train_subset", allow_none=True)
    _positive_int(cfg, "data.val_subset", allow_none=True)
    _one_of(cfg.data.get("val_source", "test"), "data.val_source", ("test", "holdout"))
    device = check_device(cfg)
    fast_settings(cfg.train)  # train.channels_last / autocast / compile values
    if device == "cpu":  # and what an explicit CPU run cannot do (an `auto` run is checked when it starts)
        check_fast_settings(cfg.train, device)
    validate_finetune(cfg)  # finetune.* (train/finetune.py)
    validate_norm(cfg)  # norm.nbs against the batch sizes, BRN schedule, precise-BN samples
    validate_data_config(cfg)  # data keys, imbalance, sampler k x m vs batch sizes, eval sampler
