"""The one error path of every entry point (`python -m bnlab.train`, `bnlab <cmd>`, the make targets that call them).

An error the user can fix is one line on stderr naming the key or the file, and an exit code: 2 for bad input (a
config key, a config group option, a malformed YAML file, a missing dataset, a checkpoint that does not fit),
1 for a file the system refused to write, 130 for Ctrl-C. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import errno
import re

from bnlab.config_errors import ConfigError
from bnlab.data.errors import DatasetNotFoundError
from bnlab.train.checkpoint import CheckpointError

USER_ERRORS = (ConfigError, DatasetNotFoundError, CheckpointError)  # bad input: one line, exit 2
EXIT_FAILED, EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED = 1, 2, 3, 130  # 130 = 128 + SIGINT, as a shell says
# the file system refused a write (disk full, read-only, no permission, quota): one line naming the file, exit 1
STORAGE_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT)


def _yaml_error(e: BaseException) -> BaseException | None:
    """The YAML parser's error behind `e` (OmegaConf and Hydra raise it as it is, or as a cause)."""
    import yaml

    while e is not None:
        if isinstance(e, yaml.YAMLError):
            return e
        e = e.__cause__ or e.__context__
    return None


def yaml_line(e) -> str:
    """A YAML file's syntax error: the file, line and column, and what the parser expected."""
    mark = getattr(e, "problem_mark", None)
    where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "a config file"
    return f"malformed YAML in {where}: {getattr(e, 'problem', None) or e}"


def hydra_line(e) -> str:
    """Hydra's own errors in one line: an unknown config group option names the group, the options and the nearest
    one; others (a misspelt key, an override that does not parse) lose their line breaks and the search path."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(e, MissingConfigException) and e.options and "/" in (e.missing_cfg_file or ""):
        group, _, name = e.missing_cfg_file.rpartition("/")
        near = difflib.get_close_matches(name, e.options, n=1)
        hint = f"; did you mean {group}={near[0]}?" if near else ""
        return str(ConfigError(group, f"no config {group}/{name}.yaml{hint}", allowed=sorted(e.options)))
    if isinstance(e, OverrideParseException):  # the grammar's complaint, after the override that it refused
        return f"override {e.override!r} does not parse: {e.message.splitlines()[0].split('. See ')[0]}"
    text = str(e).split("\nConfig search path:")[0]
    cause = e.__cause__
    if cause is not None and str(cause) not in text:
        text += f" ({cause})"
    return re.sub(r"\s*\n\s*", "; ", text.strip())


def error_line(e: BaseException, user_errors: tuple = USER_ERRORS) -> tuple[str, int] | None:
    """(the line to print, the exit code) for an error the user can fix; None for a bug (keep its traceback)."""
    from hydra.errors import CompactHydraException

    if isinstance(e, KeyboardInterrupt):
        return "interrupted (Ctrl-C): stopped before finishing; nothing further was written", EXIT_INTERRUPTED
    if isinstance(e, user_errors):
        return f"error: {e}", EXIT_BAD_INPUT
    if (parse := _yaml_error(e)) is not None:
        return f"error: {yaml_line(parse)}", EXIT_BAD_INPUT
    if isinstance(e, CompactHydraException):  # a misspelt key, an unknown config group option, a bad override
        return f"error: {hydra_line(e)}", EXIT_BAD_INPUT
    if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
        return f"error: cannot write {e.filename or 'a run file'}: {e.strerror or e}", EXIT_FAILED
    return None
