"""`bnlab figures --wandb` (`make figures WANDB=1`) logs a study's figures and tables to one W&B run in the study's
group, offline by default; read back from the offline run's .wandb file."""

from __future__ import annotations

import json
import shutil
import time

from bnlab import REPO_ROOT
from bnlab.cli import main
from wandb_records import records


def test_figures_and_tables_reach_an_offline_wandb_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "collected"
    shutil.copytree(REPO_ROOT / "results" / "nbs" / "cpu", out, ignore=shutil.ignore_patterns("*.png", "*.pdf"))
    main(["figures", "nbs", "--runs", str(tmp_path / "runs"), "--out", str(out), "--wandb"])
    said = capsys.readouterr().out
    assert "-> W&B run figures-nbs-cpu, group nbs (offline" in said
    (run_file,) = (tmp_path / "runs" / "nbs" / "_figures" / "wandb").glob("offline-run-*/run-*.wandb")
    recs = records(run_file)
    for _ in range(120):  # wandb's writer process may still be flushing the last records after finish()
        if any(r.WhichOneof("record_type") == "history" for r in recs):
            break
        time.sleep(0.5)
        recs = records(run_file)
    (run,) = [r.run for r in recs if r.WhichOneof("record_type") == "run"][:1]
    assert run.run_group == "nbs" and run.job_type == "figures"
    logged: dict[str, dict] = {}  # key -> {field: JSON value} (wandb nests a media value's fields)
    for r in recs:
        if r.WhichOneof("record_type") == "history":
            for i in r.history.item:
                if len(i.nested_key) == 2:
                    logged.setdefault(i.nested_key[0], {})[i.nested_key[1]] = json.loads(i.value_json)
    assert logged["figures/nbs_error_vs_nbs"]["_type"] == "image-file"
    assert logged["tables/nbs_table"]["_type"] == "table-file" and logged["tables/nbs_table"]["nrows"] > 0
    assert "tables/nbs_u_test" in logged
