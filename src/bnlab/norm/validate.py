"""Check the `norm` block against the batch sizes before anything is built (called from bnlab.config.validate)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from omegaconf import ListConfig

from bnlab.config_errors import ConfigError
from bnlab.norm.batchnorm import GHOST_LAYOUTS, TRAIN_STATS
from bnlab.norm.renorm import SCHEDULE_UNITS

BATCH_EVAL_MODES = ("batch", "adaptive")  # eval modes that run BN layers in training mode on validation batches


def _world_size() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))  # set by torchrun before the process group exists


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(norm, key: str, low: float, high: float | None = None, allow_none: bool = False) -> None:
    v = norm.get(key)
    if v is None and allow_none:
        return
    ok = isinstance(v, int | float) and not isinstance(v, bool) and v >= low and (high is None or v <= high)
    if not ok or (key in ("eps", "momentum") and v == 0):
        bounds = f"in ({low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"norm.{key}", f"must be a number {bounds}, got {v!r}")


def _check_nbs(cfg, name: str) -> None:
    norm, nbs = cfg.norm, cfg.norm.get("nbs")
    if nbs is None:
        return
    if not _is_int(nbs) or nbs <= 0:
        raise ConfigError("norm.nbs", f"must be a positive integer or null, got {nbs!r}")
    train_bs = int(cfg.train.batch_size)
    eval_bs = int(cfg.eval.get("batch_size") or train_bs)
    sizes = [("train.batch_size", train_bs)]
    if any(m in BATCH_EVAL_MODES for m in cfg.eval.get("modes", [])):
        sizes.append(("eval.batch_size", eval_bs))
    for key, bs in sizes:
        if nbs < bs and bs % nbs:
            raise ConfigError("norm.nbs", f"nbs={nbs} does not divide {key}={bs} (Ghost BN needs equal groups)")
        if nbs > bs:
            if name == "renorm":
                raise ConfigError("norm.nbs", f"nbs={nbs} > {key}={bs}: BatchRenorm2d has no Sync mode")
            if nbs % bs:
                raise ConfigError("norm.nbs", f"nbs={nbs} > {key}={bs} is Sync BN and must be a multiple of it")
            ranks, world = nbs // bs, _world_size()
            if world == 1 or world % ranks:
                raise ConfigError(
                    "norm.nbs",
                    f"nbs={nbs} > {key}={bs} is Sync BN over {ranks} processes, but this run has {world} "
                    "(torch.distributed); use nbs <= the batch size in a single process",
                )
    _check_partial_batches(cfg, nbs, train_bs, eval_bs)
    layout = norm.get("ghost_layout", "contiguous")
    if layout not in GHOST_LAYOUTS:
        raise ConfigError("norm.ghost_layout", f"got {layout!r}", allowed=GHOST_LAYOUTS)


def _precise_sizes(cfg) -> list[int]:
    """eval.precise_samples: one positive integer, or a list of them (each evaluated, see train.loop)."""
    samples = cfg.eval.get("precise_samples")  # conf/train.yaml holds the default
    sizes = list(samples) if isinstance(samples, Sequence | ListConfig) and not isinstance(samples, str) else [samples]
    if not sizes or not all(_is_int(n) and n > 0 for n in sizes):
        raise ConfigError("eval.precise_samples", f"must be a positive integer or a list of them, got {samples!r}")
    return sizes


def _check_partial_batches(cfg, nbs: int, train_bs: int, eval_bs: int) -> None:
    """A short last batch is cut into Ghost groups too (or, below nbs, would need Sync BN): it must be a multiple
    of nbs. Checked where its size follows from the config: precise_samples, data.val_subset."""
    modes = cfg.eval.get("modes", [])
    for samples in _precise_sizes(cfg):
        tail = samples % train_bs
        if "precise" in modes and nbs <= train_bs and tail % nbs:
            raise ConfigError(
                "eval.precise_samples",
                f"{samples} leaves a last training batch of {tail} (train.batch_size={train_bs}) that nbs={nbs} "
                f"does not divide; use a multiple of {nbs}",
            )
    val_subset = cfg.data.get("val_subset")
    if _is_int(val_subset):
        _check_val_tail(cfg, nbs, eval_bs, val_subset, f"data.val_subset={val_subset}")
    elif cfg.data.get("name") == "synthetic" and cfg.data.get("val_source", "test") == "test":
        n_test = cfg.data.get("n_test")  # the validation set is the n_test images
        if _is_int(n_test):
            _check_val_tail(cfg, nbs, eval_bs, n_test, f"data.n_test={n_test}")


def _check_val_tail(cfg, nbs: int, eval_bs: int, n_val: int, source: str) -> None:
    modes = cfg.eval.get("modes", [])
    sequential = (cfg.eval.get("sampler") or {}).get("name", "sequential") == "sequential"
    tail = n_val % eval_bs
    if sequential and any(m in BATCH_EVAL_MODES for m in modes) and nbs <= eval_bs and tail % nbs:
        raise ConfigError(
            "norm.nbs",
            f"nbs={nbs} does not divide the last validation batch of {tail} ({source} validation images "
            f"% eval.batch_size={eval_bs}), which batch-statistics evaluation normalizes in Ghost groups; make "
            f"the validation set (data.val_subset) a multiple of eval.batch_size or of {nbs}",
        )


def check_val_size(cfg, n_val: int | None) -> None:
    """The same check once the data is built and the validation set's size is known (any dataset)."""
    nbs = cfg.norm.get("nbs") if cfg.norm.get("name") in ("batch", "renorm") else None
    if _is_int(nbs) and _is_int(n_val):
        eval_bs = int(cfg.eval.get("batch_size") or cfg.train.batch_size)
        _check_val_tail(cfg, nbs, eval_bs, n_val, f"{n_val}")


def validate_norm(cfg) -> None:
    """Raise ConfigError (naming norm.<key>) for values the norm layers would reject at the first batch."""
    norm = cfg.norm
    name = norm.get("name")
    if "eps" in norm:
        _number(norm, "eps", 0)
    if name in ("batch", "renorm"):
        _check_nbs(cfg, name)
    if name in ("batch", "separate"):
        _number(norm, "momentum", 0, 1, allow_none=True)
    if name == "batch":
        if norm.get("train_stats", "batch") not in TRAIN_STATS:
            raise ConfigError("norm.train_stats", f"got {norm.get('train_stats')!r}", allowed=TRAIN_STATS)
        if not isinstance(norm.get("update_stats", True), bool):
            raise ConfigError("norm.update_stats", f"must be true or false, got {norm.get('update_stats')!r}")
    if name == "virtual":
        _number(norm, "momentum", 0, 1)
        if not _is_int(norm.get("reference_size")) or norm.get("reference_size") < 1:
            raise ConfigError("norm.reference_size", f"must be a positive integer, got {norm.get('reference_size')!r}")
    if name == "separate" and any(m in ("precise", "adaptive") for m in cfg.eval.get("modes", [])):
        raise ConfigError(
            "eval.modes", "precise/adaptive recompute one set of statistics; Separate BN keeps one per domain"
        )
    if name == "renorm" and "momentum" in norm:
        _number(norm, "momentum", 0, 1)
    if name == "renorm":
        _number(norm, "r_max", 1)
        _number(norm, "d_max", 0)
        unit = norm.get("schedule_unit", "steps")
        if unit not in SCHEDULE_UNITS:
            raise ConfigError("norm.schedule_unit", f"got {unit!r}", allowed=SCHEDULE_UNITS)
        for key in ("warmup_steps", "r_max_full_at", "d_max_full_at"):
            v = norm.get(key, 0)
            # in steps an integer; in EMA time constants any number (rounded to steps by the factory)
            ok = _is_int(v) if unit == "steps" else isinstance(v, int | float) and not isinstance(v, bool)
            if not ok or v < 0:
                kind = "an integer" if unit == "steps" else "a number"
                raise ConfigError(f"norm.{key}", f"must be {kind} >= 0 (schedule_unit={unit}), got {v!r}")
    if name == "separate" and (not _is_int(norm.get("num_domains", 2)) or norm.get("num_domains", 2) < 1):
        raise ConfigError("norm.num_domains", f"must be a positive integer, got {norm.get('num_domains')!r}")
    if name == "group" and (not _is_int(norm.get("groups", 32)) or norm.get("groups", 32) < 1):
        raise ConfigError("norm.groups", f"must be a positive integer, got {norm.get('groups')!r}")
    _precise_sizes(cfg)
