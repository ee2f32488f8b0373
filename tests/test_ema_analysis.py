"""The EMA vs Precise BN analysis draws its samples figure from the momenta that were run."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from bnlab import REPO_ROOT
from bnlab.results.analysis import load_study_module

ema = load_study_module("ema_vs_precise")


def _plotted_lines(monkeypatch, runs: pd.DataFrame, tmp_path) -> list[str]:
    """Labels of the lines in ema_vs_precise_samples, or [] when the analysis wrote no such figure."""
    seen = {}
    real_save = ema.save_figure

    def keep(fig, out, name):
        seen[name] = [
            line.get_label() for ax in fig.axes for line in ax.get_lines() if not line.get_label().startswith("_")
        ]
        return real_save(fig, out, name)

    monkeypatch.setattr(ema, "save_figure", keep)
    written = ema.analyze(runs, pd.DataFrame(), tmp_path)
    plt.close("all")
    assert ("ema_vs_precise_samples" in seen) == any("ema_vs_precise_samples" in str(p) for p in written)
    return seen.get("ema_vs_precise_samples", [])


def test_samples_figure_has_a_line_per_tested_momentum(monkeypatch, tmp_path):
    """The tested runs have no momentum 0.1: the figure shows each momentum that was run instead of an empty plot."""
    runs = pd.read_csv(REPO_ROOT / "results/ema_vs_precise/cpu/tested/runs.csv")
    labels = _plotted_lines(monkeypatch, runs, tmp_path)
    assert sorted(labels) == ["3 ep, lr 0.1, momentum 0.001", "3 ep, lr 0.8, momentum 0.01"]


def test_samples_figure_keeps_pytorchs_default_momentum_when_the_grid_has_it(monkeypatch, tmp_path):
    runs = pd.read_csv(REPO_ROOT / "results/ema_vs_precise/cpu/runs.csv")
    labels = _plotted_lines(monkeypatch, runs, tmp_path)
    assert labels and all("momentum" not in label for label in labels)
