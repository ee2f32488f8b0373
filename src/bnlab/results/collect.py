"""Turn a study's run directories into one row per run (every config key flattened) and a long per-epoch table.

Tolerates partial runs: a directory with a config but no summary is `interrupted` (it has a checkpoint) or
`incomplete`; unreadable files are reported in the `problem` column instead of stopping the collection.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from bnlab.utils.io import atomic_write_text, read_json

SUMMARY_KEYS = (
    "status",
    "epochs_completed",
    "step",
    "wall_time",
    "git_commit",
    "git_dirty",
    "cpu_model",
    "threads",
    "math_libraries",
    "device",
    "device_name",
    "torch",
    "cuda",
    "reason",
    "n_params",
    "events",
)


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v) if isinstance(v, list) else v  # lists (e.g. eval.modes) as one hashable cell
    return out


def _read_run(run_dir: Path) -> tuple[dict, pd.DataFrame | None]:
    row: dict = {"run_id": run_dir.name, "run_dir": str(run_dir)}
    problems = []
    try:
        row.update(flatten(yaml.safe_load((run_dir / "config.yaml").read_text()) or {}))
    except (OSError, yaml.YAMLError) as e:
        problems.append(f"config.yaml: {e}")
    epochs = None
    if (run_dir / "metrics.csv").exists():
        try:
            epochs = pd.read_csv(run_dir / "metrics.csv")
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            problems.append(f"metrics.csv: {e}")
    summary = read_json(run_dir / "summary.json")
    if summary is None and (run_dir / "summary.json").exists():
        problems.append("summary.json unreadable")
    if summary:
        row.update({k: summary.get(k) for k in SUMMARY_KEYS if k in summary})
        row.update(summary.get("final", {}))
    else:
        row["status"] = "interrupted" if (run_dir / "checkpoint.pt").exists() else "incomplete"
        if epochs is not None and len(epochs):
            row.update(epochs.iloc[-1].to_dict())
            row["epochs_completed"] = len(epochs)
    row["problem"] = "; ".join(problems) or None
    if epochs is not None:
        epochs.insert(0, "run_id", run_dir.name)
    return row, epochs


def run_dirs(study_dir: Path) -> list[Path]:
    """Run directories are the children holding a config.yaml (skips _multirun/ and other helpers)."""
    if not study_dir.is_dir():
        return []
    return sorted(p for p in study_dir.iterdir() if p.is_dir() and (p / "config.yaml").exists())


def collect(study_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, per_epoch = [], []
    for d in run_dirs(Path(study_dir)):
        row, epochs = _read_run(d)
        rows.append(row)
        if epochs is not None:
            per_epoch.append(epochs)
    runs = pd.DataFrame(rows)
    epochs = pd.concat(per_epoch, ignore_index=True) if per_epoch else pd.DataFrame(columns=["run_id", "epoch"])
    return runs, epochs


def varying_keys(runs: pd.DataFrame, exclude=("seed", "run_id", "run_dir")) -> list[str]:
    """Config columns whose value differs between runs: the arms of a sweep (seed excluded)."""
    cfg_cols = [c for c in runs.columns if "." in c or c in ("seed", "study")]
    return [c for c in cfg_cols if c not in exclude and runs[c].astype(str).nunique() > 1]


def _parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Arrow needs one type per column: stringify object columns that mix types, keeping missing values missing."""
    df = df.copy()
    for c in df.columns:
        if df[c].dtype == object and df[c].dropna().map(type).nunique() > 1:
            df[c] = df[c].map(lambda v: v if v is None or (isinstance(v, float) and v != v) else str(v))
    return df


def save(runs: pd.DataFrame, epochs: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """runs.{csv,parquet} and epochs.{csv,parquet}; CSV written atomically, parquet beside it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, df in (("runs", runs), ("epochs", epochs)):
        written.append(atomic_write_text(out / f"{name}.csv", df.to_csv(index=False)))
        tmp = out / f".{name}.parquet.tmp"
        _parquet_safe(df).to_parquet(tmp, index=False)
        tmp.replace(out / f"{name}.parquet")
        written.append(out / f"{name}.parquet")
    return written


def load(results_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a collected study back (prefers parquet, falls back to CSV)."""
    d = Path(results_dir)
    frames = []
    for name in ("runs", "epochs"):
        p = d / f"{name}.parquet"
        frames.append(pd.read_parquet(p) if p.exists() else pd.read_csv(d / f"{name}.csv"))
    return frames[0], frames[1]
