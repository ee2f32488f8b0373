"""Check the `norm` block before anything is built (called from bnlab.config.validate).

`validate_norm` asks the configured layer class (`check_config`, in the layer's own file); this module holds the
checks several layers share: numbers in a range, and nbs against every batch size the run will normalize
(Ghost BN's rule from ghost.py, Sync BN's from sync.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import ListConfig

from bnlab.config_errors import ConfigError
from bnlab.norm.ghost import GHOST_LAYOUTS, splits
from bnlab.norm.layer import layer_class, momentum_problem
from bnlab.norm.sync import sync_problem, world_size

BATCH_EVAL_MODES = ("batch", "adaptive")  # eval modes that run BN layers in training mode on validation batches


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def number(norm, key: str, low: float, strict: bool = False) -> None:
    """norm.<key> is a number >= low (> low when `strict`); the message states the rule that was applied."""
    v = norm.get(key)
    ok = isinstance(v, int | float) and not isinstance(v, bool) and (v > low if strict else v >= low)
    if not ok:
        raise ConfigError(f"norm.{key}", f"must be a number {'>' if strict else '>='} {low}, got {v!r}")


def momentum(norm, allow_none: bool = False) -> None:
    problem = momentum_problem(norm.get("momentum"), allow_none)
    if problem:
        raise ConfigError("norm.momentum", problem)


def one_of(norm, key: str, allowed: Sequence[str]) -> None:
    if norm.get(key) not in allowed:
        raise ConfigError(f"norm.{key}", f"got {norm.get(key)!r}", allowed=allowed)


def positive_int(norm, key: str) -> None:
    if not is_int(norm.get(key)) or norm.get(key) < 1:
        raise ConfigError(f"norm.{key}", f"must be a positive integer, got {norm.get(key)!r}")


def check_nbs(cfg, sync: bool) -> None:
    """norm.nbs against the training and (batch-statistics) evaluation batch sizes; `sync`: the layer has a Sync
    mode for nbs > the batch (Batch Renorm has none)."""
    nbs = cfg.norm.get("nbs")
    if nbs is None:
        return
    if not is_int(nbs) or nbs <= 0:
        raise ConfigError("norm.nbs", f"must be a positive integer or null, got {nbs!r}")
    train_bs = int(cfg.train.batch_size)
    eval_bs = int(cfg.eval.get("batch_size") or train_bs)
    sizes = [("train.batch_size", train_bs)]
    if any(m in BATCH_EVAL_MODES for m in cfg.eval.get("modes", [])):
        sizes.append(("eval.batch_size", eval_bs))
    for key, bs in sizes:
        if nbs < bs and not splits(nbs, bs):
            raise ConfigError("norm.nbs", f"nbs={nbs} does not divide {key}={bs} (Ghost BN needs equal groups)")
        if nbs > bs and not sync:
            raise ConfigError("norm.nbs", f"nbs={nbs} > {key}={bs}: BatchRenorm2d has no Sync mode")
        problem = sync_problem(nbs, bs, world_size()) if nbs > bs else None
        if problem:
            raise ConfigError("norm.nbs", f"nbs={nbs} > {key}={bs} {problem}; in one process use nbs <= {bs}")
    _check_partial_batches(cfg, nbs, train_bs, eval_bs)
    if "ghost_layout" in cfg.norm:  # a layer without the key groups its own (contiguous) way
        one_of(cfg.norm, "ghost_layout", GHOST_LAYOUTS)


def precise_sizes(cfg) -> list[int]:
    """eval.precise_samples: one positive integer, or a list of them (each evaluated, see train.loop)."""
    samples = cfg.eval.get("precise_samples")  # conf/train.yaml holds the default
    sizes = list(samples) if isinstance(samples, Sequence | ListConfig) and not isinstance(samples, str) else [samples]
    if not sizes or not all(is_int(n) and n > 0 for n in sizes):
        raise ConfigError("eval.precise_samples", f"must be a positive integer or a list of them, got {samples!r}")
    return sizes


def _check_partial_batches(cfg, nbs: int, train_bs: int, eval_bs: int) -> None:
    """A short last batch is cut into Ghost groups too (or, below nbs, would need Sync BN): it must be a multiple
    of nbs. Checked where its size follows from the config: precise_samples, data.val_subset."""
    modes = cfg.eval.get("modes", [])
    for samples in precise_sizes(cfg):
        tail = samples % train_bs
        if "precise" in modes and nbs <= train_bs and not splits(nbs, tail):
            raise ConfigError(
                "eval.precise_samples",
                f"{samples} leaves a last training batch of {tail} (train.batch_size={train_bs}) that nbs={nbs} "
                f"does not divide; use a multiple of {nbs}",
            )
    val_subset = cfg.data.get("val_subset")
    if is_int(val_subset):
        _check_val_tail(cfg, nbs, eval_bs, val_subset, f"data.val_subset={val_subset}")
    elif cfg.data.get("name") == "synthetic" and cfg.data.get("val_source", "test") == "test":
        n_test = cfg.data.get("n_test")  # the validation set is the n_test images
        if is_int(n_test):
            _check_val_tail(cfg, nbs, eval_bs, n_test, f"data.n_test={n_test}")


def _check_val_tail(cfg, nbs: int, eval_bs: int, n_val: int, source: str) -> None:
    modes = cfg.eval.get("modes", [])
    sequential = (cfg.eval.get("sampler") or {}).get("name", "sequential") == "sequential"
    tail = n_val % eval_bs
    if sequential and any(m in BATCH_EVAL_MODES for m in modes) and nbs <= eval_bs and not splits(nbs, tail):
        raise ConfigError(
            "norm.nbs",
            f"nbs={nbs} does not divide the last validation batch of {tail} ({source} validation images "
            f"% eval.batch_size={eval_bs}), which batch-statistics evaluation normalizes in Ghost groups; make "
            f"the validation set (data.val_subset) a multiple of eval.batch_size or of {nbs}",
        )


def check_val_size(cfg, n_val: int | None) -> None:
    """The same check once the data is built and the validation set's size is known (any dataset)."""
    nbs = cfg.norm.get("nbs")  # only layers with Ghost groups (batch, renorm) accept the key
    if is_int(nbs) and is_int(n_val):
        eval_bs = int(cfg.eval.get("batch_size") or cfg.train.batch_size)
        _check_val_tail(cfg, nbs, eval_bs, n_val, f"{n_val}")


def validate_norm(cfg) -> None:
    """Raise ConfigError (naming norm.<key>) for values the norm layers would reject at the first batch."""
    if "eps" in cfg.norm:
        number(cfg.norm, "eps", 0, strict=True)  # eps keeps 1/sqrt(var + eps) finite on a constant channel
    layer_class(cfg.norm.get("name")).check_config(cfg)
    precise_sizes(cfg)
