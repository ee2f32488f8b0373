"""Run a study's analysis (`experiments/<study>/analysis.py::analyze`) on its collected results, no training.

A study without its own analysis gets the default: a mean +- std table of final metrics per arm and
per-epoch curves with running-statistics and batch-statistics validation error. A study that trains nothing (an
analysis at initialization, e.g. init_collapse) defines `analyze_without_runs(preset, out)` instead, and
`bnlab figures <study>` computes it from its preset.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pandas as pd

from bnlab import REPO_ROOT
from bnlab.results.collect import load, varying_keys
from bnlab.results.figures import mean_curves, mean_of, new_figure, save_figure, say_bands
from bnlab.results.runs import completed
from bnlab.results.tables import aggregate, mean_std_cells, write_table

EXPERIMENTS_DIR = Path(os.environ.get("BNLAB_EXPERIMENTS", REPO_ROOT / "experiments"))
FINAL_METRICS = ["train_err", "val_err_running", "val_err_batch"]


def load_study_module(study: str):
    path = EXPERIMENTS_DIR / study / "analysis.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(f"bnlab_experiments_{study}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def default_analysis(runs: pd.DataFrame, epochs: pd.DataFrame, out: Path) -> list[Path]:
    done = completed(runs)
    arms = varying_keys(done) or ["study"]
    metrics = [m for m in FINAL_METRICS if m in done]
    agg = aggregate(done, arms, metrics)
    written = write_table(mean_std_cells(agg, metrics), out, "table", "Final error (%), mean ± std over seeds")
    if len(epochs):
        arm_of = done.set_index("run_id")[arms].astype(str).agg(", ".join, axis=1).rename("arm")
        per_epoch = epochs.join(arm_of, on="run_id", how="inner")
        fig, axes = new_figure(ncols=2)
        for ax, metric in zip(axes[0], ["val_err_running", "val_err_batch"]):
            if metric in per_epoch:
                mean_curves(ax, per_epoch, "epoch", metric, "arm")
            n = per_epoch.groupby("arm")["run_id"].nunique()
            ax.set(xlabel="epoch", ylabel=f"{metric} (%)", title=f"{metric.replace('_', ' ')}, {mean_of(n)}")
        axes[0][0].legend(title=", ".join(arms))
        say_bands(fig)
        written += save_figure(fig, out, "curves")
    return written


def analyze(study: str, results_dir: str | Path, preset: str = "cpu") -> list[Path]:
    out = Path(results_dir)
    module = load_study_module(study)
    if hasattr(module, "analyze_without_runs"):
        return module.analyze_without_runs(preset, out)
    runs, epochs = load(out)
    if runs.empty:
        raise FileNotFoundError(f"{out} holds no collected runs; run `bnlab collect {study}` first")
    fn = getattr(module, "analyze", None) or default_analysis
    written = []
    for variant, where, part in variants(runs, out):  # runs outside the grid (collect --all): never pooled
        if variant:
            n = f"{len(part)} run" + ("s" if len(part) != 1 else "")
            print(f"[bnlab] variant {variant}: {n} outside the study's grid, analysed alone -> {where}")
        written += fn(part.reset_index(drop=True), epochs[epochs["run_id"].isin(part["run_id"])], where)
    return written


def variants(runs: pd.DataFrame, out: Path) -> list[tuple[str, Path, pd.DataFrame]]:
    """(variant, folder, its runs). One variant (the usual case: the grid's runs) is analysed into `out`; with
    several (collect --all), the grid's ('' variant) go to `out` and every other to out/variants/<variant>, so a
    table only ever averages runs that differ in seed and arm."""
    labels = runs["variant"].fillna("").astype(str) if "variant" in runs else pd.Series("", index=runs.index)
    if labels.nunique() <= 1:
        return [(labels.iloc[0] if len(labels) else "", out, runs)]
    parts = []
    for variant in sorted(labels.unique()):
        where = out / "variants" / variant.replace("/", "_").replace(" ", "_") if variant else out
        parts.append((variant, where, runs[labels == variant]))
    return parts
