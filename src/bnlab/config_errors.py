"""The one error type for bad configuration: it names the key, the problem and the allowed values."""

from __future__ import annotations

from collections.abc import Iterable


class ConfigError(ValueError):
    def __init__(self, key: str, problem: str, allowed: Iterable | None = None):
        self.key, self.problem = key, problem
        self.allowed = None if allowed is None else list(allowed)
        msg = f"config key '{key}': {problem}"
        if self.allowed is not None:
            msg += f" (allowed: {', '.join(map(str, self.allowed))})"
        super().__init__(msg)

    def __reduce__(self):  # pickled by its arguments: a launcher's worker (joblib, submitit) sends it back whole
        return type(self), (self.key, self.problem, self.allowed)
