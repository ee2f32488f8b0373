"""Rerun one committed run from its recorded commit, threads and CPU capability, and compare its metrics bitwise.

    python scripts/rerun_bitwise.py results/<study>/cpu <run_id>

Reads the run's row of <results>/runs.csv (git_commit, threads, math_libraries' CPU capability, study, preset,
variant), checks the commit out in a temporary git worktree, finds the sweep point whose config hashes to the
run id (the study's grid in that commit's conf/, plus the row's `variant` overrides), trains it there with
OMP_NUM_THREADS / MKL_NUM_THREADS = threads and ATEN_CPU_CAPABILITY = the recorded capability, and compares every
metric of every epoch (epochs.csv) and the final row (runs.csv) with the committed values, as exact floats.
Exit 0: bitwise equal; 1: a metric differs (each difference printed); 2: the run cannot be rerun (one line why).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
NOT_METRICS = ("epoch_time", "wall_time")  # measured durations differ on every run
ENV_RECORDED = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ATEN_CPU_CAPABILITY")


class CannotRerun(Exception):
    """Why the run cannot be rerun from what it recorded: one line, exit 2."""


def run_row(results: Path, run_id: str) -> pd.Series:
    runs = pd.read_csv(results / "runs.csv", dtype={"run_id": str, "git_commit": str})
    rows = runs[runs["run_id"].astype(str).str.startswith(run_id)]
    if len(rows) != 1:
        raise CannotRerun(f"{results / 'runs.csv'}: {len(rows)} rows with run_id {run_id!r} (want exactly 1)")
    return rows.iloc[0]


def capability(row: pd.Series) -> str | None:
    """ATEN_CPU_CAPABILITY of the recorded run: its env value when recorded, else math_libraries' CPU capability."""
    recorded = row.get("aten_cpu_capability")
    if isinstance(recorded, str) and recorded:
        return recorded
    m = re.search(r"CPU capability (\w+)", str(row.get("math_libraries", "")))
    return m.group(1).lower() if m else None


def rerun_env(row: pd.Series, worktree: Path) -> dict[str, str]:
    threads = str(row.get("threads", ""))
    if not threads.isdigit():
        raise CannotRerun(f"run {row['run_id']}: threads not recorded ({threads!r}): a bitwise rerun needs them")
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "WANDB_MODE": "disabled"}
    env["PYTHONPATH"] = str(worktree / "src")
    cap = capability(row)
    if cap:
        env["ATEN_CPU_CAPABILITY"] = cap
    return env


def find_overrides(row: pd.Series, worktree: Path) -> list[str]:
    """experiment=..., scale=... and the grid point (+ variant) whose config hashes to the run id, in the
    commit's own conf/."""
    from bnlab.results.grid import _hydra, compose_point, experiments, grid_points, joined_study
    from bnlab.train.run_dir import run_id

    conf = str(worktree / "conf")
    preset = row.get("preset")
    preset = "none" if not isinstance(preset, str) or not preset else preset
    variant = row.get("variant")
    extra = variant.split(",") if isinstance(variant, str) and variant else []
    with _hydra(conf):
        for exp in [e for e in experiments(conf) if joined_study(e, conf) == row["study"]]:
            for point in grid_points(exp, preset):
                if run_id(compose_point(exp, preset, [*point, *extra])) == row["run_id"]:
                    return [f"experiment={exp}", *([f"scale={preset}"] if preset != "none" else []), *point, *extra]
    raise CannotRerun(f"no point of study {row['study']}'s grid at {row['git_commit'][:7]} hashes to {row['run_id']}")


def same(a, b) -> bool:
    """Bitwise for numbers (NaN equals NaN), text otherwise."""
    try:
        fa, fb = float(a), float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)
    return fa == fb or (math.isnan(fa) and math.isnan(fb))


def differences(committed: pd.DataFrame, rerun: pd.DataFrame, label: str) -> list[str]:
    """Every metric cell that differs between the committed and the rerun rows (same columns, same order)."""
    cols = [c for c in committed.columns if c in rerun.columns and c not in NOT_METRICS and c != "run_id"]
    if len(committed) != len(rerun):
        return [f"{label}: {len(committed)} committed rows, {len(rerun)} rerun"]
    out = []
    for i in range(len(committed)):
        for c in cols:
            a, b = committed.iloc[i][c], rerun.iloc[i][c]
            if not same(a, b):
                out.append(f"{label} row {i + 1} {c}: committed {a!r}, rerun {b!r}")
    return out


def compare(results: Path, row: pd.Series, run_dir: Path) -> list[str]:
    rerun_epochs = pd.read_csv(run_dir / "metrics.csv")
    diffs = []
    if (results / "epochs.csv").is_file():
        epochs = pd.read_csv(results / "epochs.csv", dtype={"run_id": str})
        mine = epochs[epochs["run_id"] == row["run_id"]].dropna(axis=1, how="all").reset_index(drop=True)
        diffs += differences(mine, rerun_epochs, "epochs.csv")
    final = rerun_epochs.iloc[[-1]].reset_index(drop=True)
    metric_cols = [c for c in final.columns if c in row.index and c not in ("epoch", "step")]
    diffs += differences(row[metric_cols].to_frame().T.reset_index(drop=True), final[metric_cols], "runs.csv")
    return diffs


def rerun(results: Path, run_id: str, keep: Path | None = None) -> list[str]:
    """Differences between the committed run and its rerun ([] = bitwise equal)."""
    row = run_row(results, run_id)
    commit = str(row.get("git_commit", ""))
    git = ["git", "-C", str(REPO)]
    if subprocess.run([*git, "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True).returncode:
        raise CannotRerun(f"run {row['run_id']}: commit {commit[:12]!r} is not in this repository's history")
    if str(row.get("git_dirty")) not in ("False", "false"):
        raise CannotRerun(
            f"run {row['run_id']}: its tree was dirty ({row.get('git_dirty')}): the commit is not its code"
        )
    tmp = Path(keep or tempfile.mkdtemp(prefix="bnlab-rerun-"))
    worktree = tmp / "worktree"
    subprocess.run([*git, "worktree", "add", "--detach", str(worktree), commit], check=True, capture_output=True)
    try:
        overrides = find_overrides(row, worktree)
        env = rerun_env(row, worktree)
        shown = " ".join(f"{k}={env[k]}" for k in ENV_RECORDED if k in env)
        print(f"[rerun] {row['run_id']} at {commit[:7]}: {shown} python -m bnlab.train {' '.join(overrides)}")
        cmd = [sys.executable, "-m", "bnlab.train", *overrides, f"out_dir={tmp / 'runs'}"]
        subprocess.run(cmd, cwd=worktree, env=env, check=True, capture_output=True, text=True)
        return compare(results, row, tmp / "runs" / str(row["study"]) / str(row["run_id"]))
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(worktree)], capture_output=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, help="a committed results folder holding runs.csv (and epochs.csv)")
    p.add_argument("run_id", help="the run's id (a unique prefix will do)")
    p.add_argument("--keep", type=Path, default=None, help="work here and keep the rerun's run directory")
    args = p.parse_args(argv)
    try:
        diffs = rerun(args.results, args.run_id, args.keep)
    except CannotRerun as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:
        print(f"error: {' '.join(map(str, e.cmd[:4]))} ... failed: {(e.stderr or '').strip()[-500:]}", file=sys.stderr)
        return 2
    for d in diffs:
        print(d)
    print("bitwise equal" if not diffs else f"{len(diffs)} metric cells differ")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
