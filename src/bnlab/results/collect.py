"""Turn a study's run directories into one row per run (every config key flattened) and a long per-epoch table.

Tolerates partial runs: a directory with a config but no summary is `interrupted` (it has a checkpoint) or
`incomplete`; unreadable files are reported in the `problem` column instead of stopping the collection. A run
whose files disagree with its summary (metrics.csv with fewer epochs than summary.json's epochs_completed, a last
row that is not the summary's final metrics: a truncated or edited file) is `inconsistent`, never `completed`
(its summary's status is kept in `summary_status`), so no analysis uses it.

`collect_study` also selects a study's runs: the ones its sweep grid defines (results/grid.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
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
    "world_size",  # ranks of the run (Sync BN: 2 for nbs_sync) and each rank's device, in rank order
    "device_names",
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
        disagreement = _disagreement(summary, epochs, metrics_exists=(run_dir / "metrics.csv").exists())
        if disagreement:
            row["summary_status"], row["status"] = row.get("status"), "inconsistent"
            problems.append(disagreement)
    else:
        row["status"] = "interrupted" if (run_dir / "checkpoint.pt").exists() else "incomplete"
        if epochs is not None and len(epochs):
            row.update(epochs.iloc[-1].to_dict())
            row["epochs_completed"] = len(epochs)
    row["problem"] = "; ".join(problems) or None
    if epochs is not None:
        epochs.insert(0, "run_id", run_dir.name)
    return row, epochs


def _same(a, b) -> bool:
    """Does metrics.csv's cell `a` hold summary.json's value `b` (CSV round trip: floats exact, None -> NaN)?"""
    if b is None or b == "":
        return a is None or a == "" or (isinstance(a, float) and math.isnan(a))
    if isinstance(b, bool) or not isinstance(b, int | float):
        return str(a) == str(b)
    try:
        a = float(a)
    except (TypeError, ValueError):
        return False
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _disagreement(summary: dict, epochs: pd.DataFrame | None, metrics_exists: bool) -> str | None:
    """Why metrics.csv disagrees with summary.json (None when it agrees): epoch count, epoch numbers, final row."""
    expected = summary.get("epochs_completed")
    if not isinstance(expected, int):
        return None
    if epochs is None:
        if metrics_exists:
            return "metrics.csv is unreadable"
        return f"summary.json says {expected} epochs, metrics.csv is missing" if expected else None
    if len(epochs) != expected:
        return f"metrics.csv holds {len(epochs)} epochs, summary.json says {expected} (truncated or stale)"
    if "epoch" in epochs and list(epochs["epoch"]) != list(range(1, expected + 1)):
        return f"metrics.csv's epochs are {list(epochs['epoch'])}, not 1..{expected}"
    last = epochs.iloc[-1] if len(epochs) else {}
    for key, value in (summary.get("final") or {}).items():
        if key in epochs and not _same(last[key], value):
            return f"metrics.csv's last row has {key}={last[key]}, summary.json's final {key}={value}"
    return None


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


@dataclass
class Collected:
    runs: pd.DataFrame
    epochs: pd.DataFrame
    notes: list[str] = field(default_factory=list)  # what was left out or is inconsistent, for the user


def _runs_n(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


def _describe(diff: dict) -> str:
    import json

    shown = [
        f"{k}={'<unset>' if a is None else json.loads(a)} (grid: {'<unset>' if b is None else json.loads(b)})"
        for k, (a, b) in list(diff.items())[:4]
    ]
    return ", ".join(shown) + (f", +{len(diff) - 4} more keys" if len(diff) > 4 else "")


def _place_in_grid(runs: pd.DataFrame, grid) -> tuple[pd.Series, dict]:
    """(inside the grid, per run; why each other run is not), labelling each outside run's `variant` in place."""
    from bnlab.results.grid import run_identity, variant_label

    inside, why = [], {}
    for i, run_dir in zip(runs.index, runs["run_dir"]):
        ident = run_identity(run_dir)
        if ident is None:
            inside.append(False)
            runs.loc[i, "variant"], why[i] = "unreadable config", "config.yaml unreadable"
        elif grid.contains(ident):
            inside.append(True)
        else:
            diff = grid.difference(ident)
            inside.append(False)
            runs.loc[i, "variant"], why[i] = variant_label(diff), _describe(diff)
    return pd.Series(inside, index=runs.index), why


def collect_study(
    runs_root: str | Path, study: str, preset: str = "cpu", include_all: bool = False, conf: str | None = None
) -> Collected:
    """The runs of `study` for `preset` (cpu | gpu | none | all) under <runs_root>/<study>: the ones its sweep grid
    defines. Every run gets a `variant` column: '' for a grid run, else the keys by which it differs from the grid
    (e.g. 'optim.lr=0.05'); runs outside the grid are left out (a note names them) unless `include_all`."""
    from bnlab.results.grid import StudyGrid

    study_dir = Path(runs_root) / study
    runs, epochs = collect(study_dir)
    out = Collected(runs, epochs)
    if runs.empty:
        return out
    if preset != "all" and "preset" in runs:  # preset: null (no scale preset) is --preset none
        presets = runs["preset"].map(lambda v: "none" if v is None or v != v else str(v))
        runs = runs[presets == preset].copy()
    grid = StudyGrid.of(study, preset, conf)
    runs["variant"] = ""
    if grid is None:
        out.notes.append(
            f"study {study} has no sweep grid in conf/experiment: collecting all {len(runs)} of its runs "
            f"(preset {preset}); keys that differ between them: {varying_keys(runs) or 'none but the seed'}"
        )
    elif len(runs):
        inside, why = _place_in_grid(runs, grid)
        if preset != "all" and int(inside.sum()) < grid.size:
            out.notes.append(f"{int(inside.sum())} of the {grid.size} runs of the grid are here (preset {preset})")
        if (~inside).any():
            listed = [f"  {runs.loc[i, 'run_dir']}: {why[i]}" for i in runs.index[~inside]]
            if include_all:
                out.notes.append(
                    f"--all: collecting {_runs_n(int((~inside).sum()))} outside study {study}'s sweep grid (preset "
                    f"{preset}) as their own variants (column `variant`; figures analyses each variant apart):",
                )
            else:
                out.notes.append(
                    f"left out {_runs_n(int((~inside).sum()))} outside study {study}'s sweep grid (preset {preset}, "
                    f"conf/experiment/): they differ from every grid point beyond seed and arm:"
                )
            out.notes.extend(listed)
            if not include_all:
                out.notes.append(
                    "  to collect them too, as separate variants that are never averaged with the grid's runs: --all"
                )
                runs = runs[inside]
    bad = runs[runs["status"] == "inconsistent"]
    if len(bad):
        out.notes.append(f"{_runs_n(len(bad))} inconsistent (left out of every table; rerun or delete them):")
        out.notes.extend(f"  {d}: {p}" for d, p in zip(bad["run_dir"], bad["problem"]))
    out.runs = runs.reset_index(drop=True)
    out.epochs = epochs[epochs["run_id"].isin(runs["run_id"])].reset_index(drop=True)
    return out
