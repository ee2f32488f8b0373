"""Committed results stay addressable: every committed study's CPU sweep recomposes to the run ids in its runs.csv.

A run id is the hash of the resolved config, so a refactor that renames, moves or re-defaults a config key would
silently start new run directories (and re-train every run). This test recomposes each study's sweep grid from
conf/ and checks that every run id recorded in results/<study>/cpu/runs.csv comes out again.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from omegaconf import open_dict

from bnlab import REPO_ROOT
from bnlab.train.run_dir import run_id
from test_studies import STUDIES, compose_point, sweep_grid

# keys added after some committed runs were trained, at the value that reproduces those runs: a committed run id
# may be the hash without them (train.processes: runs trained before multi-process runs existed)
ADDED_AFTER_SOME_RESULTS = {"train.processes": 1}


def _ids_of(cfg) -> set[str]:
    ids = {run_id(cfg)}
    for dotted, value in ADDED_AFTER_SOME_RESULTS.items():
        *parents, leaf = dotted.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        if node.get(leaf) == value:
            with open_dict(node):
                del node[leaf]
            ids.add(run_id(cfg))
    return ids


def _recomposed_ids() -> dict[Path, set[str]]:
    """results/<study>/cpu -> run ids of every CPU grid point of every study that writes there (nbs_sync: nbs)."""
    out: dict[Path, set[str]] = {}
    for study in STUDIES:
        for point in sweep_grid(study, "cpu"):
            cfg = compose_point(study, "cpu", point)
            out.setdefault(REPO_ROOT / "results" / str(cfg.study) / "cpu", set()).update(_ids_of(cfg))
    return out


def test_committed_run_ids_recompose():
    recomposed = _recomposed_ids()
    checked = 0
    results = REPO_ROOT / "results"
    for csv in sorted([*results.glob("*/cpu/runs.csv"), *results.glob("*/cpu/*/runs.csv")]):
        runs = pd.read_csv(csv)
        if "run_id" not in runs:
            continue
        if "variant" in runs:  # runs outside the grid (collect --all) say how they differ; the grid's must recompose
            runs = runs[runs["variant"].fillna("").astype(str) == ""]
        study_dir = csv.parent if csv.parent.name == "cpu" else csv.parent.parent  # results/nbs/cpu/sync_arm: nbs
        lost = sorted(set(runs["run_id"]) - recomposed.get(study_dir, set()))
        assert not lost, f"{csv}: these committed runs no longer recompose from conf/ (a run hash changed): {lost}"
        checked += len(runs)
    if checked == 0:
        pytest.skip("no committed runs.csv with a run_id column")
    assert checked >= 50  # the committed studies hold ~90 runs
