"""The single-run Sync BN commands of docs/gpu.md (plain, torchrun, srun) run the sweep's job: each documented
command line composes to the config of `make sweep EXP=nbs_sync`'s job of the same seed (NBS set, 2 ranks), and
one run of the plain shape at tiny size trains 2 gloo ranks whose summary says so (world size 2, one device name
per rank)."""

from __future__ import annotations

import json
import re
import shlex

import pytest
import yaml
from omegaconf import OmegaConf, open_dict

from bnlab import REPO_ROOT
from bnlab.train.run_dir import run_id
from conftest import run_entry_point
from test_studies import compose_point


def readme_sync_commands() -> list[list[str]]:
    """The Hydra overrides of every README line that runs one nbs_sync job (continuation lines joined)."""
    text = (REPO_ROOT / "docs" / "gpu.md").read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        line = line.split("#")[0]
        if "bnlab.train" in line and "experiment=nbs_sync" in line and " -m experiment" not in line:
            after = line.split("bnlab.train", 1)[1]
            commands.append([w for w in shlex.split(after) if "=" in w and not w.startswith("-")])
    return commands


def test_the_docs_show_plain_torchrun_and_srun_shapes():
    text = (REPO_ROOT / "docs" / "gpu.md").read_text()
    lines = [line for line in text.replace("\\\n", " ").splitlines() if "experiment=nbs_sync scale=gpu" in line]
    assert any(line.startswith("python -m bnlab.train") for line in lines)
    assert any(line.startswith("torchrun") for line in lines) and any(line.startswith("srun") for line in lines)
    assert len(readme_sync_commands()) >= 4


@pytest.mark.parametrize("overrides", readme_sync_commands(), ids=" ".join)
def test_each_readme_command_composes_to_the_sweeps_job(overrides):
    cfg = compose_point("nbs_sync", "gpu", overrides)
    seed = [o for o in overrides if o.startswith("seed=")]
    job = compose_point("nbs_sync", "gpu", seed)  # the sweep's job of that seed (its only axis)
    assert cfg.norm.nbs == job.norm.nbs == 256 and job.train.processes == 2
    with open_dict(job):
        job.train.processes = cfg.train.processes  # the 8-rank lines choose their ranks, nothing else
    assert run_id(cfg) == run_id(job), [k for k in ("norm", "train", "data", "model", "optim") if cfg[k] != job[k]]


def test_a_single_sync_run_records_world_size_and_devices(tmp_path):
    """The plain shape at CPU scale, shrunk: bnlab spawns 2 gloo ranks; the run is the sweep job's (same hash)."""
    tiny = ["data.train_subset=512", "data.val_subset=256", "train.epochs=1", "train.batches_per_epoch=1",
            "eval.precise_samples=256", "model.width=0.25", "health.enabled=false"]  # fmt: skip
    args = ["experiment=nbs_sync", "scale=cpu", "seed=0", *tiny]
    done = run_entry_point([*args, f"out_dir={tmp_path / 'runs'}", "logger=none"], tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (summary_path,) = (tmp_path / "runs" / "nbs").glob("*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2
    assert len(summary["device_names"].split("; ")) == 2
    assert re.search(r"nbs: 256\b", (summary_path.parent / "config.yaml").read_text())
    job = compose_point("nbs_sync", "cpu", ["seed=0"])
    with open_dict(job):
        for o in tiny:
            key, value = o.split("=", 1)
            OmegaConf.update(job, key, yaml.safe_load(value), merge=False)
    assert summary_path.parent.name == run_id(job)  # the sweep's job at the same size
