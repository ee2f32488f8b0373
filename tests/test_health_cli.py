"""`bnlab health CHECKPOINT --model module:callable --data module:callable | --images DIR [--json out.json]` on a
model and data defined outside bnlab (a module in a temporary directory on sys.path), with named errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch

from bnlab.cli import main as cli_main

USER_CODE = """
import torch
from torch import nn


def build():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 2),
    )


def build_wider():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Flatten())


def batches():
    g = torch.Generator().manual_seed(0)
    train = [(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 2, (8,), generator=g)) for _ in range(4)]
    val = [(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 2, (8,), generator=g)) for _ in range(2)]
    return train, val


def collapsed_model():
    net = build()
    with torch.no_grad():
        net[0].bias[1] = -100.0  # channel 1 dead after the ReLU on these inputs ...
        net[2].running_var[1] = 5.6e-45  # ... and its running variance at the float32 fixed point
    return net


def shifted_batches():  # channel 1 reached at validation only
    train, val = batches()
    return train, [(x * 80, y) for x, y in val]
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    name = f"user_net_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_CODE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def _checkpoint(mod: str, tmp_path: Path, builder: str = "build", wrap=None) -> Path:
    __import__(mod)
    state = getattr(sys.modules[mod], builder)().state_dict()
    path = tmp_path / "ckpt.pt"
    torch.save(wrap(state) if wrap else state, path)
    return path


def test_health_on_a_foreign_checkpoint_prints_text_and_writes_json(user_module, tmp_path, capsys):
    ckpt = _checkpoint(user_module, tmp_path, "collapsed_model", wrap=lambda s: {"epoch": 3, "state_dict": s})
    out_json = tmp_path / "out.json"
    cli_main(
        ["health", str(ckpt), "--model", f"{user_module}:build", "--data", f"{user_module}:shifted_batches",
         "--loss", "cross_entropy", "--json", str(out_json), "--batches", "4", "--val-batches", "2"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "EVENT collapsed variance" in out and "channel 1: running_var 5.61e-45" in out and "larger eps" in out
    saved = json.loads(out_json.read_text())
    assert saved["events"][0]["cause"] == "collapsed_variance"  # (and stale EMA: these running stats never trained)
    assert saved["layers"]["2"]["per_channel"]["dead_train"] == [1] and saved["gap_kind"] == "loss"
    assert saved["config"]["batches"] == 4


def test_health_on_an_image_folder_without_a_loss(user_module, tmp_path, capsys):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / "imgs" / split / cls).mkdir(parents=True)
            for i in range(3):
                pixels = (torch.rand(10, 10, 3, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(tmp_path / "imgs" / split / cls / f"{i}.png")
    ckpt = _checkpoint(user_module, tmp_path)
    cli_main(["health", str(ckpt), "--model", f"{user_module}:build", "--images", str(tmp_path / "imgs"),
              "--image-size", "8", "--batch-size", "4"])  # fmt: skip
    out = capsys.readouterr().out
    assert "KL(train-mode || eval-mode predictions)" in out and "layer" in out


@pytest.mark.parametrize(
    "args, error",
    [
        (["--model", "no_such_module_xyz:build"], "CallableNotFoundError: --model 'no_such_module_xyz:build': module"),
        (["--model", "{mod}:nope"], "CallableNotFoundError: --model '{mod}:nope': module '{mod}' has no attribute"),
        (["--model", "{mod}"], "expected module:callable"),
        (["--model", "{mod}:build", "--data", "{mod}:missing"], "CallableNotFoundError: --data"),
        (["--model", "{mod}:build_wider"], "StateDictMismatchError: checkpoint {ckpt} does not match the model"),
    ],
)
def test_health_names_what_is_wrong(user_module, tmp_path, args, error, capsys):
    ckpt = _checkpoint(user_module, tmp_path)
    args = [a.format(mod=user_module) for a in args]
    if "--data" not in args:
        args += ["--data", f"{user_module}:batches"]
    with pytest.raises(SystemExit) as e:
        cli_main(["health", str(ckpt), *args])
    assert e.value.code == 2 and error.format(mod=user_module, ckpt=ckpt) in capsys.readouterr().err


def test_health_names_a_missing_or_corrupt_checkpoint(user_module, tmp_path, capsys):
    spec = ["--model", f"{user_module}:build", "--data", f"{user_module}:batches"]
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    for args, error in [
        ([str(tmp_path / "nothing.pt"), *spec], r"CheckpointLoadError: checkpoint .*nothing.pt not found"),
        ([str(bad), *spec], r"CheckpointLoadError: checkpoint .*bad.pt does not load"),
        ([str(bad)], "is a file: a bnlab run directory is expected"),
    ]:
        with pytest.raises(SystemExit) as e:
            cli_main(["health", *args])
        assert e.value.code == 2
        assert re.search(error, capsys.readouterr().err)


@pytest.mark.e2e
def test_health_as_a_shell_command_with_the_users_code_on_pythonpath(user_module, tmp_path):
    ckpt = _checkpoint(user_module, tmp_path, wrap=lambda s: {f"module.{k}": v for k, v in s.items()})  # DDP keys
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "bnlab.cli", "health", str(ckpt), "--model", f"{user_module}:build",
         "--data", f"{user_module}:batches", "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "layer" in proc.stdout and (tmp_path / "r.json").exists()
