"""Every bad input tried as a new user would (issues 22 and 26), in one table: the command, the exit code and a
fragment of its first error line. Bad input fails before training with one line naming the key (exit 2); a run
that cannot write its files says which (exit 1); a diverged single run says so (exit 3)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bnlab import REPO_ROOT
from conftest import compose_cfg

DATA = "data=synthetic data.n_train=256 data.n_test=128"
TINY = f"{DATA} model.width=0.25 train.epochs=1 train.batch_size=64 logger=none train.progress=false device=cpu"
TRAIN, CLI, MAKE = "train", "cli", "make"

# (id, entry point, arguments, extra environment, exit code, fragment of the first error line)
CASES = [
    ("channels-last-yes", TRAIN, "train.channels_last=yes", {}, 2, "config key 'train.channels_last'"),
    ("ghost-val-tail", TRAIN, "data.n_test=100 norm.nbs=8 eval.modes=[running,batch]", {}, 2, "last validation batch"),
    ("seed-abc", TRAIN, "seed=abc", {}, 2, "config key 'seed'"),
    ("device-cuda", TRAIN, "device=cuda", {}, 2, "config key 'device': 'cuda' requested but CUDA is not available"),
    ("unknown-plus-key", TRAIN, "+train.epoch=5", {}, 2, "did you mean 'train.epochs'"),
    ("unknown-plus-section", TRAIN, "+unknown.key=1", {}, 2, "config key 'unknown': unknown key"),
    ("misspelt-key", TRAIN, "train.epoch=5", {}, 2, "train.epoch"),
    ("bad-model", TRAIN, "model.name=resnet21", {}, 2, "config key 'model.name'"),
    ("bad-nbs", TRAIN, "norm.nbs=3", {}, 2, "config key 'norm.nbs'"),
    ("wandb-mode-bogus", TRAIN, "", {"WANDB_MODE": "bogus"}, 2, "WANDB_MODE='bogus'"),
    ("online-without-key", TRAIN, "logger=wandb logger.mode=online", {"WANDB_MODE": None}, 2, "W&B API key"),
    ("missing-dataset", TRAIN, "data.root=/nowhere", {}, 2, "Fashion-MNIST not found"),
    ("missing-finetune-source", TRAIN, "finetune.from=/nowhere/run", {}, 2, "config key 'finetune.from'"),
    ("sweep-bad-job", TRAIN, "-m norm.nbs=8,3", {}, 2, "config key 'norm.nbs': nbs=3"),  # before job 0 trains
    ("unwritable-out-dir", TRAIN, "out_dir=/sys/bnlab_test", {}, 1, "error: cannot write /sys/bnlab_test"),
    ("diverged", TRAIN, "norm=none optim.lr=1e30", {}, 3, "diverged: training loss became"),
    (
        "bf16-separate-bn-mixed",
        TRAIN,
        "domains=shifted domains.train_on=mixed norm=separate train.autocast=bf16",
        {},
        0,
        None,
    ),
    ("status-typo", CLI, "status nbss", {}, 2, "no study 'nbss'"),
    ("figures-before-collect", CLI, "figures nbs --out {tmp}/empty", {}, 2, "bnlab collect nbs"),
    ("health-missing-run", CLI, "health {tmp}/no_such_run", {}, 2, "config.yaml not found"),
    ("health-corrupt-checkpoint", CLI, "health {tmp}/corrupt", {}, 2, "is corrupt or unreadable"),
    ("report-empty-results", CLI, "report --results {tmp}/empty --output {tmp}/r.html", {}, 0, "warning: no tables"),
    ("make-launcher-typo", MAKE, "check-sweep-vars LAUNCHER=slrum", {}, 2, "LAUNCHER=slrum is not a launcher"),
    ("make-retry-yes", MAKE, "check-sweep-vars RETRY_FAILED=yes", {}, 2, "RETRY_FAILED=yes"),
]


def _command(kind: str, args: str, tmp: Path) -> list[str]:
    args = args.format(tmp=tmp).split()
    if kind == TRAIN:
        out = [] if any(a.startswith("out_dir=") for a in args) else [f"out_dir={tmp / 'runs'}"]
        base = TINY.split()
        if any(a.startswith("data.root=") for a in args):  # the default dataset (Fashion-MNIST), not synthetic
            base = [a for a in base if a not in DATA.split()] + ["data.train_subset=256", "data.val_subset=128"]
        flags = [a for a in args if a.startswith("-")]
        return [sys.executable, "-m", "bnlab.train", *flags, *base, *out, *(a for a in args if a not in flags)]
    if kind == CLI:
        return [sys.executable, "-m", "bnlab.cli", *args]
    return ["make", "--no-print-directory", "-C", str(REPO_ROOT), *args]


def _corrupt_run(tmp: Path) -> None:
    from bnlab.train.run_dir import RunDir

    cfg = compose_cfg(TINY.split(), tmp)
    rd = RunDir(tmp / "corrupt")
    rd.write_config(cfg)
    rd.checkpoint.write_bytes(b"not a checkpoint")


# every case starts a process (Python, torch, Hydra: ~5-15 s on a busy 2-core machine): bnlab.train slow, others e2e
PARAMS = [pytest.param(*c, id=c[0], marks=[pytest.mark.slow if c[1] == TRAIN else pytest.mark.e2e]) for c in CASES]


@pytest.mark.parametrize("name, kind, args, env, code, fragment", PARAMS)
def test_bad_input(tmp_path, name, kind, args, env, code, fragment):
    if name == "device-cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    if name == "unwritable-out-dir" and os.access("/sys", os.W_OK) and Path("/sys").stat().st_uid != 0:
        pytest.skip("/sys is writable here")
    (tmp_path / "empty").mkdir()
    if name == "health-corrupt-checkpoint":
        _corrupt_run(tmp_path)
    full_env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", "HOME": str(tmp_path)}
    for k, v in env.items():
        full_env.pop(k, None) if v is None else full_env.__setitem__(k, v)
    full_env.pop("WANDB_API_KEY", None)
    proc = subprocess.run(
        _command(kind, args, tmp_path), cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == code, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    if fragment is not None:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if fragment in ln]
        assert lines, proc.stdout[-2000:] + proc.stderr[-3000:]
    if code == 2 and kind == TRAIN:  # refused before training: no run directory was made
        assert not list((tmp_path / "runs").glob("*/*/config.yaml"))


def test_device_cuda_without_cuda_is_refused_when_the_run_starts(tiny_cfg):
    """Checked by run(), before anything is built, not by validate(): a GPU sweep is validated (and planned) on
    the machine that submits it, e.g. a SLURM login node without CUDA."""
    from bnlab.config import validate
    from bnlab.config_errors import ConfigError
    from bnlab.runner import run

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    validate(tiny_cfg("device=cuda", "train.autocast=fp16"))  # fine on a GPU node
    with pytest.raises(ConfigError, match="'device': 'cuda' requested but CUDA is not available"):
        run(tiny_cfg("device=cuda"))
