"""collect/figures never overwrite committed results by default, never pool runs whose configs differ beyond the
seed (a study's runs are its grid's), and never call a run whose files disagree with its summary `completed`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from bnlab import CONF_DIR
from bnlab.cli import main as cli_main
from bnlab.results import grid as grid_module
from bnlab.results.collect import collect
from bnlab.runner import run

SYNTHETIC = ["data=synthetic", "data.n_train=256", "data.n_test=128", "data.train_subset=null"]
SYNTHETIC += ["data.val_subset=null", "model.width=0.25", "health.enabled=false"]

# a study small enough to train in a second: its grid is two seeds
TINY_STUDY = """# @package _global_
defaults:
  - override /data: synthetic
study: tiny
data:
  n_train: 256
  n_test: 128
model:
  width: 0.25
train:
  epochs: 1
  batch_size: 64
  progress: false
eval:
  modes: [running]
health:
  enabled: false
device: cpu
hydra:
  sweeper:
    params:
      seed: 0,1
"""


@pytest.fixture
def tiny_study(tmp_path, monkeypatch):
    """A copy of conf/ with experiment=tiny, used by collect's grid; returns a trainer of its runs."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "experiment" / "tiny.yaml").write_text(TINY_STUDY)
    monkeypatch.setattr(grid_module, "CONF_DIR", str(conf))
    runs = tmp_path / "runs"

    def train(*overrides: str) -> dict:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose("train", overrides=["experiment=tiny", "logger=none", *overrides])
        with open_dict(cfg):
            cfg.out_dir = str(runs)
        summary = run(cfg)
        assert summary["status"] == "completed"
        return summary

    return runs, train


@pytest.mark.e2e
def test_two_sweeps_with_different_lr_are_not_pooled(tiny_study, tmp_path, monkeypatch, capsys):
    """The README's `make sweep EXP=nbs ARGS="optim.lr=0.05"` then `make collect`: the lr=0.05 runs are left out
    with a message naming them and --all; with --all they are analysed as their own variant, never averaged with
    the grid's runs; and nothing lands in the committed results unless --commit."""
    runs, train = tiny_study
    grid_runs = [train(f"seed={s}") for s in (0, 1)]
    other_runs = [train("seed=0", "optim.lr=0.05")]
    monkeypatch.chdir(tmp_path)
    committed = tmp_path / "repo"
    monkeypatch.setattr("bnlab.cli.REPO_ROOT", committed)

    cli_main(["collect", "tiny", "--runs", "runs", "--preset", "none"])
    said = capsys.readouterr().out
    scratch = Path("runs/tiny/_collected/none")  # beside the runs, relative to the current directory like --runs
    collected = pd.read_csv(scratch / "runs.csv")
    assert sorted(collected["run_id"]) == sorted(r["run_id"] for r in grid_runs)
    assert "left out 1 run outside study tiny's sweep grid" in said and "--all" in said
    assert "of the 2 runs of the grid" not in said  # both grid runs are here
    for r in other_runs:
        assert r["run_dir"] in said
    assert "optim.lr=0.05 (grid: 0.1)" in said  # names the key that differs, and the grid's value
    assert not committed.exists()  # the committed results were not touched

    cli_main(["collect", "tiny", "--runs", "runs", "--preset", "none", "--all"])
    cli_main(["figures", "tiny", "--runs", "runs", "--preset", "none"])
    collected = pd.read_csv(scratch / "runs.csv").set_index("run_id")
    assert len(collected) == 3
    assert collected.loc[other_runs[0]["run_id"], "variant"] == "optim.lr=0.05"
    assert pd.isna(collected.loc[grid_runs[0]["run_id"], "variant"])  # '' for the grid's runs
    main_table = pd.read_csv(scratch / "table.csv")
    variant_table = pd.read_csv(scratch / "variants" / "optim.lr=0.05" / "table.csv")
    assert list(main_table["n"]) == [2] and list(variant_table["n"]) == [1]  # apart, not one table of 3
    assert not committed.exists()

    cli_main(["collect", "tiny", "--runs", "runs", "--preset", "none", "--commit"])
    assert len(pd.read_csv(committed / "results" / "tiny" / "none" / "runs.csv")) == 2


def test_figures_refuses_out_and_commit_together(capsys):
    with pytest.raises(SystemExit):
        cli_main(["figures", "nbs", "--out", "x", "--commit"])
    assert "not allowed with" in capsys.readouterr().err


def test_truncated_metrics_make_a_run_inconsistent_not_completed(tiny_cfg):
    """`truncate -s 1200 metrics.csv` of a finished run: collect marks it inconsistent and names the problem, and
    the analyses (completed runs only) leave it out."""
    from bnlab.results.analysis import default_analysis

    small = ["study=trunc", "train.epochs=2", *SYNTHETIC]
    ok = run(tiny_cfg(*small))
    cut = run(tiny_cfg(*small, "seed=1"))
    metrics = Path(cut["run_dir"]) / "metrics.csv"
    data = metrics.read_bytes()
    header_and_row = data.index(b"\n", data.index(b"\n") + 1) + 1
    metrics.write_bytes(data[: header_and_row + 40])  # one whole epoch row, then part of the second

    runs, epochs = collect(Path(ok["run_dir"]).parent)
    by_id = runs.set_index("run_id")
    assert by_id.loc[ok["run_id"], "status"] == "completed" and pd.isna(by_id.loc[ok["run_id"], "problem"])
    assert by_id.loc[cut["run_id"], "status"] == "inconsistent"
    assert by_id.loc[cut["run_id"], "summary_status"] == "completed"
    assert "metrics.csv" in by_id.loc[cut["run_id"], "problem"]  # a NaN-padded second row, not the final one

    metrics.write_bytes(data[:header_and_row])  # cut exactly after an epoch: one row, no NaN, still too few
    runs, _ = collect(Path(ok["run_dir"]).parent)
    assert runs.set_index("run_id").loc[cut["run_id"], "status"] == "inconsistent"
    assert "holds 1 epochs, summary.json says 2" in runs.set_index("run_id").loc[cut["run_id"], "problem"]

    metrics.write_bytes(data.replace(b"\n2,", b"\n3,"))  # same length, wrong epoch numbers
    runs, _ = collect(Path(ok["run_dir"]).parent)
    assert "not 1..2" in runs.set_index("run_id").loc[cut["run_id"], "problem"]

    written = default_analysis(runs, epochs, Path(ok["run_dir"]).parent / "_out")
    table = pd.read_csv(next(p for p in written if p.name == "table.csv"))
    assert list(table["n"]) == [1]  # only the consistent run


def test_a_copied_run_folder_is_counted_once_by_its_run_id(tmp_path):
    """`cp -r <hash> <hash>.bak`: the same run (summary.json's run_id), collected once, the copy named in a note."""
    import json

    from bnlab.results.collect import collect_study

    for folder in ("abc123", "abc123.bak"):
        d = tmp_path / "s" / folder
        d.mkdir(parents=True)
        (d / "config.yaml").write_text("study: s\nseed: 0\npreset: null\noptim:\n  lr: 0.1\n")
        (d / "summary.json").write_text(json.dumps({"run_id": "abc123", "status": "completed"}))
    got = collect_study(tmp_path, "s", preset="none")
    assert list(got.runs["run_dir"]) == [str(tmp_path / "s" / "abc123")]
    assert any("abc123.bak: a copy of run abc123" in n for n in got.notes)


def test_a_table_never_pools_runs_that_differ_in_a_config_key():
    """A study without a grid (the demo's) with runs at two learning rates: a row per (nbs, lr), not one per nbs."""
    from bnlab.results.tables import aggregate

    runs = pd.DataFrame(
        {"nbs": [32, 32, 32], "optim.lr": [0.1, 0.1, 0.05], "seed": [0, 1, 0], "val_err": [0.1, 0.2, 0.5]}
    )
    table = aggregate(runs, ["nbs"], ["val_err"])
    assert list(table["optim.lr"]) == [0.05, 0.1] and list(table["n"]) == [1, 2]
    assert list(aggregate(runs[runs["optim.lr"] == 0.1], ["nbs"], ["val_err"]).columns[:1]) == ["nbs"]


@pytest.mark.e2e
def test_collect_where_keeps_one_table_of_a_shared_study(tiny_study, tmp_path, monkeypatch, capsys):
    """nbs and its Sync BN arm share one runs folder but are two tables (the claim tests of one must not average the
    other's runs): `--where KEY=VALUE` keeps the runs with that value, and their epochs only; a misspelt key is one
    line naming it and its near match, and writes nothing."""
    runs, train = tiny_study
    by_seed = {s: train(f"seed={s}") for s in (0, 1)}
    monkeypatch.chdir(tmp_path)

    cli_main(["collect", "tiny", "--runs", "runs", "--preset", "none", "--where", "seed=1", "--out", "one"])
    assert "--where seed=1: kept 1 run of 2" in capsys.readouterr().out
    kept, epochs = pd.read_csv("one/runs.csv"), pd.read_csv("one/epochs.csv")
    assert list(kept["run_id"]) == [by_seed[1]["run_id"]]
    assert set(epochs["run_id"]) == {by_seed[1]["run_id"]} and len(epochs) == 1  # one epoch, of the kept run only

    tiny = ["collect", "tiny", "--runs", "runs", "--preset", "none"]
    cli_main([*tiny, "--where", "train.batch_size=64.0", "--out", "all"])
    assert len(pd.read_csv("all/runs.csv")) == 2  # 64.0 matches 64 as a number

    with pytest.raises(SystemExit) as e:
        cli_main([*tiny, "--where", "train.batch_sise=64", "--out", "x"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "'train.batch_sise'" in err and "did you mean train.batch_size" in err
    with pytest.raises(SystemExit):
        cli_main([*tiny, "--where", "seed", "--out", "x"])
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert not Path("x").exists()


def test_select_runs_keeps_the_runs_with_the_value_and_their_epochs():
    """The fast check of `collect --where`: nbs's table keeps the one-process runs and its Sync BN arm keeps NBS 256
    of both (the runs they share are one folder); 2 matches 2.0; a bad key names its near match."""
    from bnlab.results.collect import Collected, select_runs

    runs = pd.DataFrame(
        {
            "run_id": ["a", "b", "c", "d"],
            "norm.nbs": [2, 256, 256, 256],
            "train.processes": [1.0, 1.0, 2.0, 2.0],
            "seed": [0, 0, 0, 1],
        }
    )
    epochs = pd.DataFrame({"run_id": ["a", "a", "b", "c", "d"], "epoch": [1, 2, 1, 1, 1]})
    got = Collected(runs, epochs, ["a note"])
    one = select_runs(got, ["train.processes=1"])
    assert list(one.runs["run_id"]) == ["a", "b"] and list(one.epochs["run_id"]) == ["a", "a", "b"]
    assert one.notes == ["a note", "--where train.processes=1: kept 2 runs of 4"]
    arm = select_runs(got, ["norm.nbs=256", "train.processes=2", "seed=1"])
    assert list(arm.runs["run_id"]) == ["d"] and list(arm.epochs["run_id"]) == ["d"]
    with pytest.raises(ValueError, match="did you mean train.processes"):
        select_runs(got, ["train.process=1"])
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        select_runs(got, ["=1"])
