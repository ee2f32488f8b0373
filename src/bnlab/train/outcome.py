"""How a run (or a launcher of ranks) ended: one wrapper classifies it; the caller's `finish` records it.

completed: the body returned; diverged: a non-finite loss stopped it (Diverged); failed: any other exception (its
traceback kept for error.txt, re-raised when asked); running: interrupted (KeyboardInterrupt, a kill), so nothing
is recorded and the checkpoint stays for a resume. As lightning-hydra-template's task_wrapper, in one place.
"""

from __future__ import annotations

import signal
import threading
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

# exit status of a run stopped by SIGTERM (128 + 15, what a shell reports for a SIGTERM death): it kept its last
# checkpoint and flushed W&B, so rerunning (or a scheduler's requeue) resumes it
TERMINATED_EXIT = 143


class Diverged(RuntimeError):
    pass


class Terminated(BaseException):
    """SIGTERM arrived (SLURM timeout or preemption, `kill`): like KeyboardInterrupt, the run is left resumable."""


class SigtermGuard:
    """While active (main thread only), SIGTERM raises Terminated in the training loop, except inside `deferred()`
    blocks (writing metrics.csv, W&B and the checkpoint of an epoch), where it waits for the block to end."""

    def __init__(self):
        self.pending = False
        self._depth = 0
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
        return False

    def _handle(self, signum, frame) -> None:
        self.pending = True
        if not self._depth:
            raise Terminated("SIGTERM")

    @contextmanager
    def deferred(self):
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self.pending and not self._depth:
            raise Terminated("SIGTERM")


NO_GUARD = SigtermGuard()  # never entered: deferred() blocks are plain blocks


@dataclass
class Outcome:
    status: str = "running"
    reason: str | None = None
    error: Exception | None = None
    traceback: str | None = None


def recorded(body: Callable[[], object], finish: Callable[[Outcome], None], raise_on_failure: bool) -> Outcome:
    """Call `body()`, then `finish(outcome)` however it ended (also while a failure propagates)."""
    out = Outcome()
    try:
        body()
        out.status = "completed"
    except Diverged as e:
        out.status, out.reason = "diverged", str(e)
    except Exception as e:
        out.status, out.reason, out.error = "failed", f"{type(e).__name__}: {e}", e
        out.traceback = traceback.format_exc()
        if raise_on_failure:
            raise
    finally:
        finish(out)
    return out
