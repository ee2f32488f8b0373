"""Turn a study's run directories into one row per run (every config key flattened) and a long per-epoch table.

Tolerates partial runs: a directory with a config but no summary is `interrupted` (it has a checkpoint) or
`incomplete`; unreadable files are reported in the `problem` column instead of stopping the collection. A run
whose files disagree with its summary (metrics.csv with fewer epochs than summary.json's epochs_completed, a last
row that is not the summary's final metrics: a truncated or edited file) is `inconsistent`, never `completed`
(its summary's status is kept in `summary_status`), so no analysis uses it.

`collect_study` also selects a study's runs: the ones its sweep grid defines (results/grid.py).
"""

from __future__ import annotations

import contextlib
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from bnlab.utils.io import read_json

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
    "aten_cpu_capability",
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


def _run_id(run_dir: Path, config: dict | None, summary: dict | None) -> str:
    """A run's id: the one its summary.json records, else the hash of its config.yaml, else the folder's name; a
    copied folder (`<hash>.bak`) keeps the id of the run it copies."""
    if summary and isinstance(summary.get("run_id"), str):
        return summary["run_id"]
    if config:
        from omegaconf import OmegaConf

        from bnlab.train.run_dir import run_id

        try:
            return run_id(OmegaConf.create(config))
        except Exception:  # noqa: BLE001 - an unresolvable config keeps the folder's name (its problem is reported)
            pass
    return run_dir.name


def _read_run(run_dir: Path) -> tuple[dict, pd.DataFrame | None]:
    row: dict = {"run_id": run_dir.name, "run_dir": str(run_dir)}
    problems = []
    config = None
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        row.update(flatten(config))
    except (OSError, yaml.YAMLError) as e:
        problems.append(f"config.yaml: {e}")
    epochs = None
    if (run_dir / "metrics.csv").exists():
        try:
            epochs = pd.read_csv(run_dir / "metrics.csv")
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            problems.append(f"metrics.csv: {e}")
    summary = read_json(run_dir / "summary.json")
    row["run_id"] = _run_id(run_dir, config, summary)
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
        epochs.insert(0, "run_id", row["run_id"])
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


def collect(study_dir: str | Path, notes: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per run (by run id: a copied run folder is counted once, the folder named by the id kept) and the
    per-epoch rows of those runs; `notes` receives the copies left out."""
    rows, per_epoch, seen = {}, {}, {}
    for d in run_dirs(Path(study_dir)):
        row, epochs = _read_run(d)
        rid = row["run_id"]
        if rid in rows and d.name != rid:  # a copy of a run already read (sorted: `<hash>` before `<hash>.bak`)
            _note(notes, f"{d}: a copy of run {rid} ({seen[rid]}), counted once")
            continue
        if rid in rows:
            _note(notes, f"{seen[rid]}: a copy of run {rid} ({d}), counted once")
        rows[rid], seen[rid] = row, d
        per_epoch.pop(rid, None)
        if epochs is not None:
            per_epoch[rid] = epochs
    runs = pd.DataFrame(list(rows.values()))
    per_epoch = list(per_epoch.values())
    epochs = pd.concat(per_epoch, ignore_index=True) if per_epoch else pd.DataFrame(columns=["run_id", "epoch"])
    return runs, epochs


def _note(notes: list[str] | None, text: str) -> None:
    if notes is not None:
        notes.append(text)


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
    """runs.{csv,parquet} and epochs.{csv,parquet}: all four are written to temporary files first and then moved in
    place, so an interrupted collect (Ctrl-C, a kill) leaves the previous tables, not a new runs with old epochs."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        for name, df in (("runs", runs), ("epochs", epochs)):
            staged.append((out / f".{name}.csv.tmp", out / f"{name}.csv"))
            staged[-1][0].write_text(df.to_csv(index=False))
            staged.append((out / f".{name}.parquet.tmp", out / f"{name}.parquet"))
            _parquet_safe(df).to_parquet(staged[-1][0], index=False)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, final in staged:
        tmp.replace(final)
    return [final for _, final in staged]


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


def select_runs(got: Collected, where: list[str]) -> Collected:
    """Only the runs whose columns hold the given values (`KEY=VALUE`, e.g. `train.processes=1`), with their epochs:
    one table of a study whose runs several tables share (nbs: NBS 2..256 in one process; its Sync BN arm at NBS
    256). A value matches as text, as a claim test's `where` does, or as the same number (1 matches 1.0). An unknown
    key or a malformed item raises ValueError naming it, before anything is written."""
    runs = got.runs
    for item in where:
        key, sep, want = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--where {item!r}: expected KEY=VALUE, e.g. train.processes=1")
        if key not in runs:
            near = difflib.get_close_matches(key, [str(c) for c in runs.columns], n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(near)}?" if near else " (a config key as runs.csv names it: norm.nbs)"
            raise ValueError(f"--where {item!r}: no column {key!r} in the collected runs{hint}")
        match = runs[key].astype(str) == want
        with contextlib.suppress(ValueError):  # a number also matches as a number; other text only as text
            match |= pd.to_numeric(runs[key], errors="coerce") == float(want)
        runs = runs[match]
    kept = set(runs["run_id"])
    epochs = got.epochs[got.epochs["run_id"].isin(kept)] if "run_id" in got.epochs else got.epochs
    note = f"--where {' '.join(where)}: kept {_runs_n(len(runs))} of {len(got.runs)}"
    return Collected(runs.copy(), epochs.copy(), [*got.notes, note])


def collect_study(
    runs_root: str | Path, study: str, preset: str = "cpu", include_all: bool = False, conf: str | None = None
) -> Collected:
    """The runs of `study` for `preset` (cpu | gpu | none | all) under <runs_root>/<study>: the ones its sweep grid
    defines. Every run gets a `variant` column: '' for a grid run, else the keys by which it differs from the grid
    (e.g. 'optim.lr=0.05'); runs outside the grid are left out (a note names them) unless `include_all`."""
    from bnlab.results.grid import StudyGrid

    study_dir = Path(runs_root) / study
    notes: list[str] = []
    runs, epochs = collect(study_dir, notes)
    out = Collected(runs, epochs, notes)
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
