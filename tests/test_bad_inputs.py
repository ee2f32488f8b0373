"""Every bad input tried as a new user would (issues 22 and 26), in one table: the command, the exit code and a
fragment of its first error line. Bad input fails before training with one line naming the key (exit 2); a run
that cannot write its files says which (exit 1); a diverged single run says so (exit 3)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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
    # issue 33: non-finite numbers, a rule and its message that agree, an empty sweep, Hydra's and YAML's errors,
    # files where folders go, checkpoints of another model
    ("lr-nan", TRAIN, "optim.lr=nan", {}, 2, "config key 'optim.lr': must be a finite number, got nan"),
    ("lr-inf", TRAIN, "optim.lr=inf", {}, 2, "config key 'optim.lr': must be a finite number, got inf"),
    ("weight-decay-nan", TRAIN, "optim.weight_decay=nan", {}, 2, "config key 'optim.weight_decay': must be a finite"),
    ("eps-zero", TRAIN, "norm.eps=0", {}, 2, "config key 'norm.eps': must be a number > 0, got 0"),
    ("sweep-no-jobs", TRAIN, "-m seed=range(0,0)", {}, 2, "config key 'seed': seed=range(0,0) sweeps no values"),
    ("hydra-unknown-option", TRAIN, "norm=batchh", {}, 2, "config key 'norm': no config norm/batchh.yaml; did you"),
    ("hydra-unknown-study", TRAIN, "-m experiment=nbss", {}, 2, "did you mean experiment=nbs?"),
    ("hydra-override-syntax", TRAIN, "norm.nbs=[8", {}, 2, "override 'norm.nbs=[8' does not parse"),
    ("malformed-yaml", TRAIN, "--config-dir={tmp}/conf norm=mine", {}, 2, "malformed YAML in {tmp}/conf/norm/mine"),
    ("out-dir-is-a-file", TRAIN, "out_dir={tmp}/afile", {}, 2, "config key 'out_dir': {tmp}/afile is a file"),
    ("resume-other-model", TRAIN, "", {}, 2, "was written by another model than this config builds"),
    ("finetune-other-model", TRAIN, "finetune.from={tmp}/other", {}, 2, "config key 'finetune.from': checkpoint"),
    ("plan-unknown-study", CLI, "plan nbss", {}, 2, "config key 'experiment': no config experiment/nbss.yaml"),
    ("plan-unknown-scale", CLI, "plan nbs --scale tpu", {}, 2, "config key 'scale': no config scale/tpu.yaml"),
    ("plan-unknown-norm", CLI, "plan experiment=nbs norm=batchh", {}, 2, "did you mean norm=batch?"),
    ("collect-no-runs", CLI, "collect nbs --runs {tmp}/empty", {}, 2, "no runs of study nbs"),
    ("sync-unknown-study", CLI, "sync nbss --runs {tmp}/empty", {}, 2, "no run directories under"),
    ("health-other-model", CLI, "health {tmp}/other", {}, 2, "was written by another model"),
    ("collect-ctrl-c", CLI, "collect blocked --runs {tmp}/runs --preset all", {}, 130, "interrupted (Ctrl-C)"),
    ("make-plan-unknown-study", MAKE, "plan EXP=nbss", {}, 2, "did you mean experiment=nbs?"),
    ("make-sweep-unknown-study", MAKE, "sweep EXP=nbss", {}, 2, "did you mean experiment=nbs?"),
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


def _run_with_another_models_checkpoint(tmp: Path, rd) -> None:
    """`rd` holds the tiny run's config and a checkpoint that a twice as wide model wrote."""
    from bnlab.train.build import build
    from bnlab.train.checkpoint import Progress, save

    cfg = compose_cfg(TINY.split(), tmp)
    rd.write_config(cfg)
    save(rd, build(compose_cfg([*TINY.split(), "model.width=0.5"], tmp), "cpu"), Progress(epoch=1))


def _prepare(name: str, tmp: Path) -> None:
    """What a case needs on disk before its command runs."""
    from bnlab.train.run_dir import RunDir

    if name == "health-corrupt-checkpoint":
        _corrupt_run(tmp)
    elif name == "malformed-yaml":
        (tmp / "conf" / "norm").mkdir(parents=True)
        (tmp / "conf" / "norm" / "mine.yaml").write_text("name: batch\neps: [1e-5\nmomentum: 0.1\n")
    elif name == "out-dir-is-a-file":
        (tmp / "afile").write_text("a file where the run directories would go\n")
    elif name == "resume-other-model":  # the run directory this config maps to, resumed
        _run_with_another_models_checkpoint(tmp, RunDir.for_config(compose_cfg(TINY.split(), tmp)))
    elif name in ("finetune-other-model", "health-other-model"):
        _run_with_another_models_checkpoint(tmp, RunDir(tmp / "other"))
    elif name == "collect-ctrl-c":  # a run whose config.yaml is a pipe: collect waits on it until interrupted
        (tmp / "runs" / "blocked" / "run").mkdir(parents=True)
        os.mkfifo(tmp / "runs" / "blocked" / "run" / "config.yaml")


def _files(tmp: Path) -> set[Path]:
    """Every file under the case's folder, but HOME's dot folders (caches that Python libraries keep)."""
    return {p for p in tmp.rglob("*") if not p.relative_to(tmp).parts[0].startswith(".") and not p.is_dir()}


def _interrupted(command: list[str], fifo: Path, **kw) -> subprocess.CompletedProcess:
    """Run `command` until it opens `fifo` to read (it then waits there), press Ctrl-C (SIGINT), and let it end."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    deadline, fd = time.time() + 240, None
    while fd is None and time.time() < deadline and proc.poll() is None:
        try:  # opening a FIFO to write without blocking succeeds once a reader has it open
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    if fd is not None:
        os.close(fd)
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


# every case starts a process (Python, torch, Hydra: ~5-15 s on a busy 2-core machine): bnlab.train slow, others e2e
PARAMS = [pytest.param(*c, id=c[0], marks=[pytest.mark.slow if c[1] == TRAIN else pytest.mark.e2e]) for c in CASES]


@pytest.mark.parametrize("name, kind, args, env, code, fragment", PARAMS)
def test_bad_input(tmp_path, name, kind, args, env, code, fragment):
    if name == "device-cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    if name == "unwritable-out-dir" and os.access("/sys", os.W_OK) and Path("/sys").stat().st_uid != 0:
        pytest.skip("/sys is writable here")
    (tmp_path / "empty").mkdir()
    _prepare(name, tmp_path)
    before = _files(tmp_path)
    full_env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", "HOME": str(tmp_path)}
    for k, v in env.items():
        full_env.pop(k, None) if v is None else full_env.__setitem__(k, v)
    full_env.pop("WANDB_API_KEY", None)
    command = _command(kind, args, tmp_path)
    if name == "collect-ctrl-c":
        proc = _interrupted(command, tmp_path / "runs" / "blocked" / "run" / "config.yaml", cwd=tmp_path, env=full_env)
    else:
        proc = subprocess.run(command, cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == code, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    if fragment is not None:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if fragment.format(tmp=tmp_path) in ln]
        assert lines, proc.stdout[-2000:] + proc.stderr[-3000:]
        if code in (2, 130):  # one line says it (make adds its own "Error 2" line after it)
            errors = [ln for ln in proc.stderr.splitlines() if not ln.startswith(("make", "[bnlab]"))]
            assert len(errors) == 1, proc.stderr[-3000:]
    if code in (2, 130):  # refused before training (or stopped): nothing was written
        written = _files(tmp_path) - before
        if name == "resume-other-model":  # the run's config.yaml, rewritten as it was: the same file
            written -= {p for p in written if p.name in ("config.yaml", ".lock")}
        assert not written, sorted(written)


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
