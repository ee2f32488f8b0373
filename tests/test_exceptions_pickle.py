"""Every bnlab exception survives pickling: a launcher's worker (joblib/loky, submitit) sends a job's error back to
the sweep's process by pickle, and one that does not unpickle arrives as loky's BrokenProcessPool (issue 26)."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil

import pytest

import bnlab

SKIP_MODULES = ("bnlab.train.__main__",)  # importing it is harmless, but it is the Hydra entry point


def bnlab_exception_classes() -> list[type[BaseException]]:
    found = {}
    for info in pkgutil.walk_packages(bnlab.__path__, prefix="bnlab."):
        if info.name in SKIP_MODULES:
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__.startswith("bnlab"):
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return [found[k] for k in sorted(found)]


def _example(cls: type[BaseException]) -> BaseException:
    """An instance built from made-up values for every required argument of its constructor."""
    params = [
        p
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if cls.__init__ is BaseException.__init__ or not params:
        return cls("something went wrong")
    return cls(*[f"<{p.name}>" for p in params])


def test_walk_finds_the_known_exceptions():
    names = {c.__name__ for c in bnlab_exception_classes()}
    assert {"ConfigError", "CheckpointError", "DatasetNotFoundError", "Diverged", "ClaimFileError"} <= names


@pytest.mark.parametrize("cls", bnlab_exception_classes(), ids=lambda c: c.__qualname__)
def test_exception_round_trips_through_pickle(cls):
    err = _example(cls)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert str(back) == str(err) and back.args == err.args
    assert vars(back) == vars(err)  # key, allowed values, ... kept


def test_config_error_keeps_key_and_allowed_values():
    from bnlab.config_errors import ConfigError

    err = pickle.loads(pickle.dumps(ConfigError("schedule.factor", "not an option", allowed=("warmup_epochs",))))
    assert err.key == "schedule.factor" and err.allowed == ["warmup_epochs"]
    assert str(err) == "config key 'schedule.factor': not an option (allowed: warmup_epochs)"
