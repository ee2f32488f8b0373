"""How a run (or a launcher of ranks) ended: one wrapper classifies it; the caller's `finish` records it.

completed: the body returned; diverged: a non-finite loss stopped it (Diverged); failed: any other exception (its
traceback kept for error.txt, re-raised when asked); running: interrupted (KeyboardInterrupt, a kill), so nothing
is recorded and the checkpoint stays for a resume. As lightning-hydra-template's task_wrapper, in one place.
"""

from __future__ import annotations

import os
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


def stop_signals() -> list[signal.Signals]:
    """SIGTERM (SLURM, torchrun, `kill`), and inside a submitit job the signal submitit preempts and times out with
    (SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise), whose handler checkpoints and requeues the job."""
    out = [signal.SIGTERM]
    if os.environ.get("SUBMITIT_EXECUTOR"):
        usr = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)
        if usr is not None and usr != signal.SIGTERM and callable(signal.getsignal(usr)):
            out.append(usr)
    return out


def _raise_terminated(signum: int) -> None:
    raise Terminated(signal.Signals(signum).name)


class SigtermGuard:
    """While active (main thread only), a stop signal (`stop_signals`) calls `on_stop` once: by default it raises
    Terminated in the training loop, except inside `deferred()` blocks (writing metrics.csv, W&B and the checkpoint
    of an epoch), where it waits for the block to end. Every rank of a run has one: all stop, none is orphaned.

    The handler found on entry is not replaced for good: on exit, once the run has stopped and its files are
    written, it gets the signal (submitit's: checkpoint the job and requeue it; its SIGTERM handler logs)."""

    def __init__(self, on_stop: Callable[[int], None] = _raise_terminated):
        self.on_stop = on_stop
        self.pending = False
        self.signum: int | None = None  # the first stop signal received
        self._stopped = False
        self._depth = 0
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in stop_signals()}
        return self

    def __exit__(self, *exc):
        previous, self._previous = self._previous, {}
        for s, handler in previous.items():
            signal.signal(s, handler)
        handler = previous.get(self.signum)
        if callable(handler):  # a framework's own handler (submitit requeues): its turn, now the run has stopped
            handler(self.signum, None)
        return False

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
        self.pending = True
        if not self._depth:
            self._stop()

    def _stop(self) -> None:
        if not self._stopped:  # once: a second signal (a group-wide kill after a forwarded one) changes nothing
            self._stopped = True
            self.on_stop(self.signum)

    def stopping(self) -> bool:
        """A stop signal arrived: a failure now (a peer rank that left first breaks a collective) is no failure."""
        return self.pending

    @contextmanager
    def deferred(self):
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if self.pending and not self._depth:
            self._stop()


NO_GUARD = SigtermGuard()  # never entered: deferred() blocks are plain blocks


@dataclass
class Outcome:
    status: str = "running"
    reason: str | None = None
    error: Exception | None = None
    traceback: str | None = None


def recorded(
    body: Callable[[], object],
    finish: Callable[[Outcome], None],
    raise_on_failure: bool,
    stopping: Callable[[], bool] = lambda: False,
) -> Outcome:
    """Call `body()`, then `finish(outcome)` however it ended (also while a failure propagates). An error raised
    once `stopping()` (a stop signal arrived) is an interruption, not a failure: Terminated, nothing recorded."""
    out = Outcome()
    try:
        body()
        out.status = "completed"
    except Diverged as e:
        out.status, out.reason = "diverged", str(e)
    except Exception as e:
        if stopping():
            raise Terminated(f"stopped ({type(e).__name__} while stopping: {e})") from e
        out.status, out.reason, out.error = "failed", f"{type(e).__name__}: {e}", e
        out.traceback = traceback.format_exc()
        if raise_on_failure:
            raise
    finally:
        finish(out)
    return out
