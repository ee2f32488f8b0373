"""Validate a composed config before anything is built: each error names the key and the allowed values."""

from __future__ import annotations

from omegaconf import DictConfig

from bnlab.config_errors import ConfigError


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


def validate(cfg: DictConfig) -> None:
    from bnlab.data import DATASETS, SHARED_KEYS, validate_data_config
    from bnlab.data.samplers import SAMPLERS
    from bnlab.models import MODELS
    from bnlab.norm import NORMS, validate_norm
    from bnlab.train.evaluate import EVAL_MODES
    from bnlab.train.finetune import validate_finetune
    from bnlab.train.losses import LOSSES
    from bnlab.train.optim import OPTIMIZERS, SCHEDULES
    from bnlab.train.wandb_logger import MODES

    # every group's name, and its keys against the constructor's signature (unknown keys fail here, named)
    DATASETS.check(cfg.data, shared=SHARED_KEYS)
    SAMPLERS.check(cfg.sampler)
    MODELS.check(cfg.model)
    NORMS.check(cfg.norm)
    OPTIMIZERS.check(cfg.optim)
    SCHEDULES.check(cfg.schedule, shared=("length_epochs",))  # read by Schedule itself
    LOSSES.check(cfg.loss)
    _one_of(cfg.logger.get("mode"), "logger.mode", MODES)
    for m in cfg.eval.get("modes", []):
        _one_of(m, "eval.modes", EVAL_MODES)

    lr = cfg.optim.get("lr")
    if not isinstance(lr, int | float) or isinstance(lr, bool) or lr <= 0:
        raise ConfigError("optim.lr", f"must be a positive number, got {lr!r}")
    if float(cfg.optim.get("weight_decay", 0.0)) < 0:
        raise ConfigError("optim.weight_decay", f"must be >= 0, got {cfg.optim.weight_decay!r}")
    _positive_int(cfg, "train.batch_size")
    _positive_int(cfg, "train.epochs")
    _positive_int(cfg, "train.processes", allow_none=True)
    _positive_int(cfg, "train.accumulate", allow_none=True)  # micro-batches per optimizer step
    processes = int(cfg.train.get("processes") or 1)
    if cfg.train.batch_size % processes:
        raise ConfigError(
            "train.processes", f"{processes} processes do not split train.batch_size={cfg.train.batch_size}"
        )
    _positive_int(cfg, "train.batches_per_epoch", allow_none=True)
    _positive_int(cfg, "eval.batch_size", allow_none=True)
    _positive_int(cfg, "data.train_subset", allow_none=True)
    _positive_int(cfg, "data.val_subset", allow_none=True)
    _one_of(cfg.data.get("val_source", "test"), "data.val_source", ("test", "holdout"))
    device = str(cfg.get("device", "auto"))
    if not (device in ("auto", "cpu") or device.startswith("cuda")):
        raise ConfigError("device", f"got {device!r}", allowed=("auto", "cpu", "cuda", "cuda:N"))
    validate_finetune(cfg)  # finetune.* (train/finetune.py)
    validate_norm(cfg)  # norm.nbs against the batch sizes, BRN schedule, precise-BN samples
    validate_data_config(cfg)  # data keys, imbalance, sampler k x m vs batch sizes, eval sampler
