"""The ten_ways analysis: each way's row reads its arm's metrics under that way's statistics."""

from __future__ import annotations

import pandas as pd
import pytest

from bnlab.results.analysis import load_study_module


@pytest.fixture
def study():
    return load_study_module("ten_ways")


def test_each_way_reads_its_arm_and_eval_mode(study, tmp_path):
    arms = sorted({arm for _, _, arm, _, _ in study.WAYS})
    rows = []
    for i, arm in enumerate(arms):
        row = {"arm": arm, "status": "completed", "seed": 0, "train_err": 0.01 * i}
        for j, mode in enumerate(("running", "batch", "precise", "adaptive")):
            row[f"val_err_{mode}"] = 0.1 * i + 0.001 * j
            row[f"target_err_{mode}"] = 0.1 * i + 0.002 * j + 0.05
        row.update({"domains.contrast": 0.5, "domains.brightness": 100.0, "domains.noise_std": 20.0})
        rows.append(row)
    runs = pd.DataFrame(rows + [{**rows[0], "status": "failed", "val_err_running": 9.0}])  # failed: ignored
    table = study.way_table(runs).set_index("way")
    assert len(table) == len(study.WAYS)
    i = arms.index("bn")
    assert table.loc["Adaptive BN", "source_err_mean"] == pytest.approx(0.1 * i + 0.003)
    assert table.loc["Adaptive BN", "target_err_mean"] == pytest.approx(0.1 * i + 0.006 + 0.05)
    assert table.loc["EMA statistics", "target_err_mean"] == pytest.approx(0.1 * i + 0.05)
    j = arms.index("no_update")
    assert table.loc["no, then Precise BN", "source_err_mean"] == pytest.approx(0.1 * j + 0.002)
    written = study.analyze(runs, pd.DataFrame(), tmp_path)
    assert {p.name for p in written} >= {"ten_ways_table.md", "ten_ways_errors.png", "ten_ways_errors.pdf"}
    assert "0.5 x + 100 + N(0, 20^2)" in (tmp_path / "ten_ways_table.md").read_text()


def test_missing_arms_leave_out_their_rows(study):
    runs = pd.DataFrame([{"arm": "group", "status": "completed", "train_err": 0.1, "val_err_running": 0.2}])
    table = study.way_table(runs)
    assert list(table["way"]) == ["GroupNorm (no batch statistics)"] and table["target_err_mean"].isna().all()
