"""Slow: the init_collapse study (C6, an analysis at initialization) end to end at a tiny size."""

from __future__ import annotations

import importlib.util

import pandas as pd
import pytest

from bnlab import REPO_ROOT


def load_study():
    spec = importlib.util.spec_from_file_location("init_collapse", REPO_ROOT / "experiments/init_collapse/analysis.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("preset", ["cpu", "gpu"])
def test_presets_compose(preset):
    cfg = load_study().load_config(preset, ["seeds=[0]"])
    assert cfg.preset == preset and set(cfg.mlp.arms) == {"relu", "linear", "relu_shift"}
    assert cfg.mlp.shown_depths[-1] == cfg.mlp.depth
    assert cfg.convnet.data in ("fashion_mnist", "cifar10")


@pytest.mark.slow
def test_init_collapse_end_to_end(tmp_path):
    study = load_study()
    tiny = ["seeds=[0]", "mlp.depth=20", "mlp.width=64", "mlp.batch=256", "mlp.calibration_batch=256"]
    tiny += ["mlp.shown_depths=[0,10,20]", "convnet.width=0.125", "convnet.batch=32", "convnet.calibration_batch=32"]
    study.main(["--preset", "cpu", "--out", str(tmp_path), *tiny])
    pngs = {p.stem for p in tmp_path.glob("*.png")}
    assert {"init_collapse_mlp_fraction", "init_collapse_convnet_fraction", "init_collapse_mlp_relu"} <= pngs
    assert len(list(tmp_path.glob("*.pdf"))) == len(pngs)
    mlp = pd.read_csv(tmp_path / "init_collapse_mlp_fraction.csv").set_index("depth")
    mean = lambda cell: float(cell.split(" ± ")[0])
    # the claim at a tiny size: the ReLU net has lost most within-channel variance by depth 20, the others have not
    assert mean(mlp.loc[20, "relu"]) < 0.3 < 0.9 < mean(mlp.loc[20, "linear"])
    assert mean(mlp.loc[20, "relu_shift"]) > 0.9
    conv = pd.read_csv(tmp_path / "init_collapse_convnet_fraction.csv").set_index("layer")
    assert mean(conv.loc["conv 7", "bn_real"]) > 0.95  # BN standardizes every channel


def test_figures_computes_an_analysis_without_runs(monkeypatch, tmp_path):
    """`bnlab figures init_collapse` (no runs to collect) runs the analysis from its preset, not `load(runs.csv)`."""
    from bnlab import cli
    from bnlab.results import analysis

    study = load_study()
    calls = []
    monkeypatch.setattr(study, "run", lambda cfg, out: calls.append((cfg.preset, out)) or [out / "x.png"])
    monkeypatch.setattr(analysis, "load_study_module", lambda name: study if name == "init_collapse" else None)
    cli.main(["figures", "init_collapse", "--preset", "gpu", "--out", str(tmp_path)])
    assert calls == [("gpu", tmp_path)]
