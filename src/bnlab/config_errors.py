"""The one error type for bad configuration: it names the key, the problem and the allowed values."""

from __future__ import annotations

from collections.abc import Iterable


class ConfigError(ValueError):
    def __init__(self, key: str, problem: str, allowed: Iterable | None = None):
        self.key = key
        msg = f"config key '{key}': {problem}"
        if allowed is not None:
            msg += f" (allowed: {', '.join(map(str, allowed))})"
        super().__init__(msg)
