"""One way to register and build a configurable thing: name -> constructor, config keys -> keyword arguments.

Models, norms, samplers, datasets, optimizers, schedules and losses each keep a `Registry`. A config group
(conf/<group>/<name>.yaml) holds `name:` plus the constructor's keyword arguments, so the YAML is the one home of
every default; `check` compares the keys with the constructor's signature, so a misspelt or unknown key
(`+optim.lrr=0.1`) fails before training with an error naming it (as pycls's builders, with hydra's key paths).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable

from bnlab.config_errors import ConfigError

_CONFIGURABLE = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _signature(fn: Callable) -> list[inspect.Parameter]:
    return list(inspect.signature(fn).parameters.values())


class Registry(dict):
    """`group` is the config path errors name (norm -> 'norm.name', 'norm.eps'); `runtime` are the arguments the
    builder supplies itself (e.g. num_features, labels), never read from the config."""

    def __init__(self, group: str, runtime: Iterable[str] = ()):
        super().__init__()
        self.group, self.runtime = group, frozenset(runtime)

    def register(self, name: str, fn: Callable | None = None):
        """`@REG.register("x")` on a function or class, or `REG.register("x", fn)`."""
        if fn is not None:
            self[name] = fn
            return fn
        return functools.partial(self.register, name)

    def lookup(self, name, prefix: str | None = None) -> Callable:
        if name not in self:
            raise ConfigError(f"{prefix or self.group}.name", f"unknown {self.group} {name!r}", allowed=sorted(self))
        return self[name]

    def options(self, name: str) -> tuple[list[str], list[str]]:
        """(config keys the constructor accepts, those without a default: the YAML must give them).

        A `from_config(cls, ..., **kwargs)` classmethod that forwards its `**kwargs` to the class accepts the
        class's own keyword arguments too (followed here); any other constructor taking `**kwargs` must name its
        config keys in its signature, or they are refused as unknown."""
        fn = self[name]
        params = self._params(fn)
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, type) and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in _signature(fn)):
            named = {p.name for p in params}
            params += [p for p in self._params(owner) if p.name not in named]
        return [p.name for p in params], [p.name for p in params if p.default is inspect.Parameter.empty]

    def _params(self, fn: Callable) -> list[inspect.Parameter]:
        return [p for p in _signature(fn) if p.kind in _CONFIGURABLE and p.name not in self.runtime]

    def kwargs(self, cfg, prefix: str | None = None, shared: Iterable[str] = ()) -> dict:
        """The constructor's keyword arguments from `cfg`, after checking every key. `shared` keys belong to the
        group as a whole (read by the caller, e.g. data.train_subset): allowed, and passed only if accepted."""
        prefix = prefix or self.group
        name = cfg.get("name")
        self.lookup(name, prefix)
        accepted, required = self.options(name)
        keys = [k for k in cfg if k != "name"]
        unknown = [k for k in keys if k not in accepted and k not in shared]
        if unknown:
            raise ConfigError(f"{prefix}.{unknown[0]}", f"not an option of {self.group} {name!r}", allowed=accepted)
        missing = [k for k in required if k not in keys]
        if missing:
            raise ConfigError(f"{prefix}.{missing[0]}", f"missing: {self.group} {name!r} needs it")
        return {k: cfg[k] for k in keys if k in accepted}

    def check(self, cfg, prefix: str | None = None, shared: Iterable[str] = ()) -> None:
        self.kwargs(cfg, prefix, shared)

    def partial(self, cfg, prefix: str | None = None, shared: Iterable[str] = ()) -> Callable:
        """The constructor with the config's arguments bound; call it with the runtime arguments."""
        return functools.partial(self[cfg.get("name")], **self.kwargs(cfg, prefix, shared))

    def build(self, cfg, prefix: str | None = None, shared: Iterable[str] = (), **runtime):
        return self.partial(cfg, prefix, shared)(**runtime)
