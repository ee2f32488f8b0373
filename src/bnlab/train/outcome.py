"""How a run (or a launcher of ranks) ended: one wrapper classifies it; the caller's `finish` records it.

completed: the body returned; diverged: a non-finite loss stopped it (Diverged); failed: any other exception (its
traceback kept for error.txt, re-raised when asked); running: interrupted (KeyboardInterrupt, a kill), so nothing
is recorded and the checkpoint stays for a resume. As lightning-hydra-template's task_wrapper, in one place.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass


class Diverged(RuntimeError):
    pass


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
