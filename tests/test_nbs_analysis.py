"""The nbs analysis: the NBS table, the U-shape tests, and the Sync BN arm against one process at the same NBS."""

from __future__ import annotations

import pandas as pd
import pytest

from bnlab.results.analysis import load_study_module


def _run(seed: int, nbs: int, processes: int, train: float, val: float, precise: float) -> dict:
    return {
        "status": "completed",
        "seed": seed,
        "norm.nbs": nbs,
        "train.batch_size": 256,
        "train.processes": processes,
        "train_err": train,
        "val_err_running": val,
        "val_err_precise": precise,
    }


def _runs(with_sync: bool) -> pd.DataFrame:
    rows = []
    for seed in range(3):
        for nbs, err in ((2, 0.10), (32, 0.08), (256, 0.09)):
            rows.append(_run(seed, nbs, 1, err - 0.01 + 0.0003 * seed, err + 0.001 * seed, err + 0.0005 * seed))
        if with_sync:
            rows.append(_run(seed, 256, 2, 0.08 + 0.0007 * seed, 0.092 + 0.002 * seed, 0.09 + 0.001 * seed))
    return pd.DataFrame(rows)


def test_sync_arm_is_compared_with_one_process_at_the_same_nbs(tmp_path):
    study = load_study_module("nbs")
    written = {p.name for p in study.analyze(_runs(True), pd.DataFrame(), tmp_path)}
    assert {"nbs_table.md", "nbs_u_test.md", "nbs_sync_test.md", "nbs_error_vs_nbs.png"} <= written
    table = pd.read_csv(tmp_path / "nbs_table.csv")
    assert "Sync BN, 2 x 128" in set(table["how"])
    test = pd.read_csv(tmp_path / "nbs_sync_test.csv").set_index("metric")
    row = test.loc["val, EMA stats"]
    assert row["nbs"] == 256 and row["n sync / one"] == "3 / 3"
    assert row["sync"] == pytest.approx(9.4) and row["one process"] == pytest.approx(9.1)
    assert row["sync - one"] == pytest.approx(0.3)


def test_without_a_sync_arm_there_is_no_sync_table(tmp_path):
    study = load_study_module("nbs")
    written = {p.name for p in study.analyze(_runs(False), pd.DataFrame(), tmp_path)}
    assert "nbs_sync_test.md" not in written and "nbs_table.md" in written


def test_a_sync_arm_alone_still_gives_its_table_and_figure(tmp_path):
    """What `make sweep EXP=nbs_sync` alone leaves: only Sync BN runs, no one-process arm to test against."""
    study = load_study_module("nbs")
    runs = _runs(True)
    written = {p.name for p in study.analyze(runs[runs["train.processes"] == 2], pd.DataFrame(), tmp_path)}
    assert {"nbs_table.md", "nbs_sync_test.md", "nbs_error_vs_nbs.png"} <= written
    assert "nbs_u_test.md" not in written
