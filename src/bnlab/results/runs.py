"""What every study analysis asks of its collected runs: which runs count, and in which order arms are shown."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd


def completed(runs: pd.DataFrame, *also: str) -> pd.DataFrame:
    """The runs whose status is `completed` (or one of `also`, e.g. "diverged" where a NaN is a result), as a copy
    the analysis may add columns to. Failed, interrupted and inconsistent runs never enter a table."""
    return runs[runs["status"].isin(("completed", *also))].copy()


def arm_order(arms: Iterable, preferred: Sequence) -> list:
    """The arms present, those of `preferred` first in its order, then any others sorted."""
    present = set(arms)
    return [a for a in preferred if a in present] + sorted(present - set(preferred))


def measured_on(done: pd.DataFrame, cached: pd.DataFrame) -> bool:
    """A post-hoc measurement cached beside the collected tables still stands: it was made on exactly these runs,
    or (their run directories gone, as in a fresh clone) on a subset of them."""
    ids, have = set(done["run_id"].astype(str)), set(cached["run_id"].astype(str))
    gone = not all(Path(d).is_dir() for d in done["run_dir"])
    return have == ids or (gone and have <= ids)
