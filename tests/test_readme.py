"""The README and docs/*.md say only what the code does.

Every command line of a ```bash block is either run here at tiny size (`make` as a dry run, `bnlab` through its
own argument parser, `bnlab plan`, `python -m bnlab.train` composed and validated, and trained in the e2e suite) or
mapped to the test that runs it (MAPPED, whose node ids must exist); a command neither knows fails
`test_every_command_is_checked`, so a new command needs a check. Outputs shown in the pages are compared with what
the code prints; Python blocks are executed on tiny data.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from bnlab import cli
from bnlab.config import validate
from conftest import TINY, compose_cfg, run_entry_point

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FMNIST = Path("/usr/share/datasets/fashion-mnist")

# command prefix, then (indented) the test that runs what the command does; the longest matching prefix wins
MAPPED_TABLE = """
python -m bnlab.train finetune.from=
    tests/test_finetune.py::test_frozen_finetune_trains_the_weights_with_constant_statistics
python -m bnlab.train data=cifar10 data.download=true
    tests/test_data_cifar.py::test_build_data_on_tiny_cifar10_with_holdout_and_augmentation
python -m bnlab.train experiment=nbs_sync scale=gpu
    tests/test_distributed_engines.py::test_spawn_torchrun_and_submitit_ranks_train_the_same_run
torchrun --nproc_per_node=2 -m bnlab.train
    tests/test_distributed_engines.py::test_spawn_torchrun_and_submitit_ranks_train_the_same_run
torchrun --nnodes=2
    tests/test_distributed_engines.py::test_ranks_come_from_torchrun_variables
srun
    tests/test_distributed_engines.py::test_ranks_come_from_srun_variables
bnlab fetch
    tests/test_data_cifar.py::test_official_checksums_reject_a_repacked_archive
bnlab health runs/
    tests/test_health.py::test_healthy_run_is_quiet_and_denormal_running_var_is_flagged_with_layer_and_channels
bnlab health ckpt.pt --model mypkg.nets:
    tests/test_health_cli.py::test_health_as_a_shell_command_with_the_users_code_on_pythonpath
bnlab health ckpt.pt --model mypkg/nets.py:
    tests/test_health_cli.py::test_health_on_an_image_folder_without_a_loss
bnlab collect nbs --runs runs/pilots --all
    tests/test_collect_integrity.py::test_two_sweeps_with_different_lr_are_not_pooled
bnlab collect nbs --preset cpu --commit --where
    tests/test_collect_integrity.py::test_collect_where_keeps_one_table_of_a_shared_study
bnlab collect nbs --preset cpu --where
    tests/test_collect_integrity.py::test_collect_where_keeps_one_table_of_a_shared_study
bnlab collect
    tests/test_sweep.py::test_collect_tolerates_completed_diverged_failed_and_half_written_runs
bnlab figures
    tests/test_sweep.py::test_figures_build_from_fixture_and_change_with_data
bnlab sync
    tests/test_wandb_history.py::test_sync_rebuilds_a_run_from_metrics_csv
OMP_NUM_THREADS=1 PYTHONPATH=src python examples/diagnose_foreign_model.py
    tests/test_readme.py::test_the_diagnose_example_prints_what_the_pages_show
"""
_rows = MAPPED_TABLE.strip().splitlines()
MAPPED = {prefix.strip(): node.strip() for prefix, node in zip(_rows[::2], _rows[1::2], strict=True)}
# checked in this file: make (dry run + its variables), bnlab plan (run), python -m bnlab.train (compose + validate)
RUN_HERE = ("make ", "bnlab plan ", "python -m bnlab.train ")


def code_blocks(page: Path, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", page.read_text(), re.M | re.S)


def commands_of(block: str) -> list[str]:
    """One entry per command: continuation lines joined, `# comments` dropped, `a && b` split."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        line = re.split(r"\s+#\s", line, maxsplit=1)[0].strip()
        out += [part.strip() for part in line.split("&&") if part.strip()]
    return out


def all_commands() -> list[tuple[str, str]]:
    return [(p.name, c) for p in PAGES for b in code_blocks(p, "bash") for c in commands_of(b)]


def how_checked(command: str) -> str | None:
    mapped = [prefix for prefix in MAPPED if command.startswith(prefix)]
    if mapped:
        return MAPPED[max(mapped, key=len)]
    return next((p for p in RUN_HERE if command.startswith(p)), None)


def commands_checked_here(prefix: str) -> list[str]:
    return sorted({c for _, c in all_commands() if how_checked(c) == prefix})


def test_every_command_is_checked():
    unknown = [f"{page}: {c}" for page, c in all_commands() if how_checked(c) is None]
    assert not unknown, "commands no test checks (add a check and a row to MAPPED):\n" + "\n".join(unknown)
    assert len(all_commands()) > 40  # the parser found the pages' commands


def test_mapped_tests_exist():
    for node in set(MAPPED.values()):
        path, name = node.split("::")
        tree = ast.parse((REPO / path).read_text())
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert name.split("[")[0] in names, f"MAPPED names {node}, which does not exist"


# --- make: a dry run of the target with the page's variables, and the variable checks run for real


def make(args: list[str], **kw) -> subprocess.CompletedProcess:
    dry = ["-o", "install", "-o", "data", "-o", "sweep-data"]  # nothing installed or fetched
    return subprocess.run(["make", "--no-print-directory", *dry, *args], cwd=REPO, capture_output=True, text=True, **kw)


@pytest.mark.parametrize("command", commands_checked_here("make "))
def test_make_commands_dry_run(command):
    args = shlex.split(command)[1:]
    proc = make(["-n", *args])
    assert proc.returncode == 0, proc.stderr
    target = args[0]
    if target in ("sweep", "plan", "pilot"):
        variables = [a for a in args if "=" in a]
        checks = make(["check-sweep-vars", "need-exp", *variables])
        assert checks.returncode == 0, checks.stdout + checks.stderr
        assert re.search(r"bnlab(\.train -m| plan) experiment=\S+ scale=", proc.stdout), proc.stdout


def test_make_help_names_the_default_launcher():
    assert "(here: joblib)" in make(["help"]).stdout
    assert "(here: joblib)" in make(["help", "SCALE=gpu"]).stdout  # every scale: a GPU box runs a job per GPU


# --- bnlab: every command line parses with the CLI's own parser


@pytest.mark.parametrize("command", sorted({c for _, c in all_commands() if c.startswith("bnlab ")}))
def test_bnlab_commands_parse(command, monkeypatch):
    seen = []
    for name in dir(cli):
        if name.startswith("cmd_"):
            monkeypatch.setattr(cli, name, lambda args, name=name: seen.append(name))
    cli.main(shlex.split(command)[1:])
    assert seen == [f"cmd_{shlex.split(command)[1]}"]


# --- python -m bnlab.train: each configuration composes and validates here; the e2e suite trains it tiny


def train_overrides(command: str) -> list[str]:
    return shlex.split(command.split("bnlab.train", 1)[1])


@pytest.mark.parametrize("command", commands_checked_here("python -m bnlab.train "))
def test_train_commands_compose_and_validate(command, tmp_path):
    validate(compose_cfg([*TINY, *train_overrides(command)], tmp_path))


@pytest.mark.e2e
@pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST not installed")
@pytest.mark.parametrize("command", commands_checked_here("python -m bnlab.train "))
def test_train_commands_train_at_tiny_size(command, tmp_path):
    shrink = ["data.train_subset=512", "data.val_subset=256", "train.epochs=1", f"out_dir={tmp_path}"]
    # TINY's model.width=0.5 shrinks a ResNet; mlp_deep's width counts units and refuses 0.5 (tests/test_models.py)
    tiny = [o for o in TINY if not o.startswith("model.width=")] if "model=mlp_deep" in command else TINY
    proc = run_entry_point([*tiny, *train_overrides(command), *shrink], cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(tmp_path.glob("*/*/summary.json"))


# --- outputs the pages show


def shown_after(page: Path, marker: str) -> str:
    """The first plain ``` block after `marker` in the page."""
    text = page.read_text()
    return re.search(r"^```\n(.*?)^```", text[text.index(marker) :], re.M | re.S).group(1)


def plan_output(args: list[str], cwd: Path, monkeypatch, capsys) -> str:
    monkeypatch.chdir(cwd)  # run directories under ./runs, as from the repository root
    capsys.readouterr()
    cli.main(["plan", *args])
    return capsys.readouterr().out


def test_plan_output_shown_is_what_plan_prints(tmp_path, monkeypatch, capsys):
    out = plan_output(["nbs_sync", "--scale", "gpu"], tmp_path, monkeypatch, capsys)
    assert shown_after(REPO / "README.md", "The plan prints:") == out
    assert shown_after(REPO / "docs" / "gpu.md", "One study's full output") == out


@pytest.mark.slow
@pytest.mark.parametrize("command", commands_checked_here("bnlab plan "))
def test_plan_commands_run(command, tmp_path, monkeypatch, capsys):
    assert "jobs:" in plan_output(shlex.split(command)[2:], tmp_path, monkeypatch, capsys)


def plan_totals(out: str) -> list[str]:
    """A plan's totals as the cost table's cells: jobs, GPUs per job, steps, PFLOP, GPU-hours per type."""
    jobs = re.search(r"^(\d+) jobs:", out, re.M).group(1)
    gpus = re.search(r"GPUs per job: ([\d/]+)", out).group(1)
    steps = re.search(r"steps: ([\d,]+) in all", out).group(1)
    pflop = re.search(r"([\d.]+) PFLOP in all", out).group(1)
    hours = [re.search(rf"^  {g}\s+([\d.]+) /", out, re.M).group(1) for g in ("V100", "A100", "L40S", "H100")]
    return [jobs, gpus, steps, pflop, *hours]


@pytest.mark.slow
def test_gpu_cost_table_is_what_plan_prints(tmp_path, monkeypatch, capsys):
    rows = re.findall(r"^\| (\w+) \| (\d.*) \|$", (REPO / "docs" / "gpu.md").read_text(), re.M)
    assert {study for study, _ in rows} == {p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml")}
    for study, cells in rows:
        out = plan_output([study, "--scale", "gpu"], tmp_path, monkeypatch, capsys)
        assert [c.strip() for c in cells.split("|")] == plan_totals(out), study


NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def matches(shown: str, printed: str, rel: float | None) -> bool:
    """One shown line against one printed line: the same text, numbers within `rel` (None: any number)."""
    if NUMBER.sub("#", shown) != NUMBER.sub("#", printed):
        return False
    if rel is None:
        return True
    pairs = zip(NUMBER.findall(shown), NUMBER.findall(printed), strict=True)
    return all(float(a) == pytest.approx(float(b), rel=rel, abs=1e-12) for a, b in pairs)


def assert_shown_in(shown: str, printed: str, rel: float | None, free: tuple[str, ...] = ()) -> None:
    """Every shown line is a printed line, in order; a "..." line stands for any lines left out. Lines starting
    with one of `free` (a wall time) may differ in their numbers."""
    lines, i = printed.splitlines(), 0
    for want in shown.splitlines():
        if want.strip() == "...":
            continue
        tol = None if want.startswith(free) else rel
        while i < len(lines) and not matches(want, lines[i], tol):
            i += 1
        assert i < len(lines), f"shown line not printed (in order): {want!r}\nprinted:\n{printed}"
        i += 1


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST not installed")
def test_the_diagnose_example_prints_what_the_pages_show():
    """The whole 1200-step example (minutes on one core); training numbers within 2%, the wall time free."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "examples/diagnose_foreign_model.py"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    for page, marker in (("README.md", "Its output, shortened"), ("docs/health.md", "Its output (seed 1")):
        assert_shown_in(shown_after(REPO / page, marker), proc.stdout, rel=0.02, free=("trained",))


@pytest.mark.e2e
@pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST not installed")
def test_make_demo_ends_as_the_readme_shows(tmp_path):
    """`make demo`'s recipe at the tiny size the README's output was made at, from a copy of its command lines."""
    shown = shown_after(REPO / "README.md", "It ends with these lines")
    args = re.search(r'make demo ARGS="([^"]*)"', (REPO / "README.md").read_text()).group(1)
    recipe = make(["-n", "demo", "ARGS=" + " ".join(args.split())]).stdout.splitlines()
    bin_dir = str(Path(sys.executable).parent) + "/"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    out = ""
    for line in recipe[recipe.index(next(r for r in recipe if "bnlab.train -m" in r)) :]:
        line = line.replace(".venv/bin/", bin_dir)
        proc = subprocess.run(line, shell=True, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:]
        out += proc.stdout
    assert_shown_in(shown, out, rel=None)


# --- facts the pages state


def test_conf_groups_listed_are_the_conf_folders():
    listed = re.search(r"Config groups live in `conf/` \(`([^`]*)`\)", (REPO / "README.md").read_text()).group(1)
    assert set(listed.replace("/", " ").split()) == {p.name for p in (REPO / "conf").iterdir() if p.is_dir()}


def study_rows() -> list[list[str]]:
    text = (REPO / "README.md").read_text().split("## Studies", 1)[1]
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| `")]


def test_study_table_verdicts_are_the_computed_ones():
    for _study, _claim, _varies, _preset, verdict in study_rows():
        word, link = re.fullmatch(r"\[([\w ]+)\]\((experiments/\w+/README.md)#computed-verdict\)", verdict).groups()
        computed = re.search(r"\*\*Computed verdict \(rule \d+\): ([^*]+)\*\*", (REPO / link).read_text()).group(1)
        assert computed.startswith(word) and not computed[len(word) :][:1].isalnum(), (link, word, computed)


def test_study_table_presets_are_the_composed_ones():
    rows = study_rows()
    assert len(rows) == len({p.name for p in (REPO / "experiments").iterdir() if (p / "claim.yaml").exists()})
    for study, _claim, _varies, preset, _verdict in rows:
        names = re.findall(r"`(\w+)`", preset)
        if not names:  # an analysis at init, no training preset
            continue
        study = re.match(r"`(\w+)`", study).group(1)
        for scale, (data, model) in zip(("cpu", "gpu"), (names[:2], names[2:]), strict=True):
            cfg = compose_cfg([f"experiment={study}", f"scale={scale}"])
            assert (cfg.data.name, cfg.model.name) == (data, model), (study, scale)


# --- Python blocks


def tiny_model_and_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 10))
    batches = [(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))) for _ in range(3)]
    return model, batches


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks may write files (bn_health.json)
    for block in code_blocks(page, "python"):
        model, batches = tiny_model_and_batches()
        namespace = {"model": model, "train_loader": batches, "val_loader": batches, "val_batches": batches,
                     "F": F, "step": 1, "batch": batches[0]}  # fmt: skip
        exec(compile(block, f"{page.name} python block", "exec"), namespace)
