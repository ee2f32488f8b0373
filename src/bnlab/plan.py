"""A sweep's jobs before any of them runs: each job's config checked, its run directory and its state.

Hydra's multirun launches jobs one by one, so a bad value in job 5 used to surface after jobs 0-4 had trained.
`check_sweep` (called by the `SweepSummary` callback when a multirun starts, in the launching process, for every
launcher) composes every job of the sweep exactly as the launcher will, validates it, and stops the sweep with
the first bad job's one-line error before anything trains. `bnlab plan <overrides>` prints the same table
without training: job, state (completed / to do / interrupted / running / failed / diverged), run directory.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, open_dict, read_write

from bnlab.train.finetune import SWEEP_PLAN_ENV

EXIT_CONFIG = 2  # bad input (a config error, a missing dataset, a corrupt checkpoint): nothing trained


@dataclass
class Job:
    num: int
    overrides: list[str]
    run_dir: Path | None = None
    state: str | None = None  # completed | diverged | failed | running | interrupted | to do
    arm: str | None = None
    seed: int | None = None
    preset: str | None = None
    depends_on: str | None = None  # finetune.from=arm:<name>
    error: str | None = None  # why this job's config is refused
    processes: int = 1  # ranks of the run (train.processes)
    device: str = "auto"
    cost: object | None = None  # bnlab.cost.Cost, when asked (plan_jobs(..., costs=True))

    swept: list[str] | None = None  # the overrides that differ between the sweep's jobs

    @property
    def label(self) -> str:
        return " ".join(self.overrides if self.swept is None else self.swept) or "(no overrides)"


def sweep_overrides(master: DictConfig, config_loader) -> list[list[str]]:
    """Each job's overrides, in launch order, as Hydra's BasicSweeper expands them (grid in the config's
    hydra.sweeper.params, then the command line's)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = master.hydra.sweeper.get("params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(master.hydra.overrides.task)
    parsed = OverridesParser.create(config_loader=config_loader).parse_overrides(arguments)
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def job_config(master: DictConfig, config_loader, overrides: list[str]) -> DictConfig:
    """The config a job's task function receives (as hydra.core.utils.run_job makes it: no `hydra` node)."""
    cfg = config_loader.load_sweep_config(master, list(overrides))
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
    return cfg


def run_state(run_dir: Path) -> str:
    """A run directory's state (train.run_dir.RunDir.state): what a sweep would do with it."""
    from bnlab.train.run_dir import RunDir

    return RunDir(run_dir).state()


def plan_jobs(master: DictConfig, config_loader, costs: bool = False) -> list[Job]:
    from bnlab.config import validate
    from bnlab.train.run_dir import RunDir

    jobs = []
    for num, overrides in enumerate(sweep_overrides(master, config_loader)):
        job = Job(num, overrides)
        jobs.append(job)
        try:
            cfg = job_config(master, config_loader, overrides)
            validate(cfg)
        except Exception as e:  # noqa: BLE001 - reported per job, named
            job.error = _one_line(e)
            continue
        job.run_dir = RunDir.for_config(cfg).root
        job.state = run_state(job.run_dir)
        job.arm, job.seed, job.preset = cfg.get("arm"), cfg.get("seed"), cfg.get("preset")
        job.processes, job.device = int(cfg.train.get("processes") or 1), str(cfg.get("device", "auto"))
        if costs:
            from bnlab.cost import job_cost

            job.cost = job_cost(cfg)
        source = str((cfg.get("finetune") or {}).get("from") or "")
        job.depends_on = source[4:] if source.startswith("arm:") else None
    common = set.intersection(*(set(j.overrides) for j in jobs)) if jobs else set()
    for j in jobs:
        j.swept = [o for o in j.overrides if o not in common]
    return jobs


def _one_line(e: Exception) -> str:
    from bnlab.config_errors import ConfigError
    from bnlab.data.errors import DatasetNotFoundError

    if isinstance(e, ConfigError | DatasetNotFoundError):
        return str(e)
    return f"{type(e).__name__}: {e}"


def format_plan(
    jobs: list[Job], retry_failed: bool = False, gpu: str | None = None, source="assumed", **assumed
) -> str:
    from collections import Counter

    action = {
        "completed": "skip",
        "running": "skip (another process)",
        "interrupted": "resume",
        "to do": "train",
        "failed": "rerun" if retry_failed else "skip (RETRY_FAILED=1 reruns)",
        "diverged": "rerun" if retry_failed else "skip (RETRY_FAILED=1 reruns)",
    }
    counts = Counter(j.state or "invalid" for j in jobs)
    lines = [f"{len(jobs)} jobs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))]
    for j in jobs:
        if j.error:
            lines.append(f"  #{j.num:<3} {'INVALID':<12} {j.label}\n        error: {j.error}")
            continue
        dep = f"  (after arm {j.depends_on})" if j.depends_on else ""
        cost = ""
        if j.cost is not None:
            c = j.cost
            cost = f" {c.gpus:>2} GPU {c.steps:>7} steps {c.gpu_hours(gpu, **assumed):7.3f} GPU-h"
        lines.append(f"  #{j.num:<3} {j.state:<12} {action[j.state]:<30}{cost} {j.run_dir}  [{j.label}]{dep}")
    if gpu is not None:
        lines.extend(cost_totals(jobs, source, **assumed))
    return "\n".join(lines)


def cost_totals(jobs: list[Job], source: str = "assumed", **assumed) -> list[str]:
    """The sweep's totals, for all jobs and for those still to train, on every GPU type of bnlab.cost; `source`
    says where utilisation and op_us come from (assumed, or measured by make bench on this GPU)."""
    from bnlab.cost import OP_MICROSECONDS, PEAK_TFLOPS, UTILISATION

    priced = [j for j in jobs if j.cost is not None]
    todo = [j for j in priced if j.state in ("to do", "interrupted")]
    util, op_us = assumed.get("utilisation", UTILISATION), assumed.get("op_us", OP_MICROSECONDS)
    lines = [
        f"GPUs per job: {'/'.join(str(n) for n in sorted({j.cost.gpus for j in priced})) or '-'}; "
        f"steps: {sum(j.cost.steps for j in priced):,} in all, {sum(j.cost.steps for j in todo):,} to train; "
        f"forward GFLOPs per image: "
        + ", ".join(sorted({f"{j.cost.flops_per_image / 1e9:.3g}" for j in priced}))
        + f"; {sum(j.cost.flops for j in priced) / 1e15:.1f} PFLOP in all",
        f"GPU-hours (all jobs / still to train), at {util:.3g} of peak and {op_us:.3g} us per operator ({source}; "
        "peaks: NVIDIA datasheets, src/bnlab/cost.py):",
    ]
    for name in PEAK_TFLOPS:
        total = sum(j.cost.gpu_hours(name, **assumed) for j in priced)
        left = sum(j.cost.gpu_hours(name, **assumed) for j in todo)
        lines.append(f"  {name:<5} {total:9.2f} / {left:9.2f}")
    return lines


def check_sweep(master: DictConfig) -> list[Job]:
    """Validate every job of the sweep in the launching process; on a bad one print its error and exit 2."""
    from hydra.core.global_hydra import GlobalHydra

    sweeper = str(master.hydra.sweeper.get("_target_", ""))
    if not sweeper.endswith("BasicSweeper"):  # another sweeper expands jobs its own way: its jobs check themselves
        return []
    jobs = plan_jobs(master, GlobalHydra.instance().config_loader())
    if not jobs:  # Hydra would launch nothing, exit 0 and leave an empty _multirun/ folder behind
        print(f"error: {empty_sweep(master)}; nothing was started", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    bad = [j for j in jobs if j.error]
    if bad:
        for j in bad:
            print(f"error: {j.error}  [sweep job #{j.num}: {j.label}]", file=sys.stderr)
        print(f"[bnlab] {len(bad)} of {len(jobs)} sweep jobs are invalid; nothing was started", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    problem = launcher_problem(master, jobs)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        print(f"[bnlab] none of the {len(jobs)} sweep jobs was started", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    order = {j.arm: j.num for j in jobs if j.arm is not None}
    for j in jobs:  # the basic launcher runs jobs in order: a dependency must come first
        if j.depends_on in order and order[j.depends_on] > j.num and "BasicLauncher" in str(master.hydra.launcher):
            print(
                f"error: sweep job #{j.num} fine-tunes arm {j.depends_on!r}, which is job #{order[j.depends_on]}"
                " later in the sweep; list that arm first",
                file=sys.stderr,
            )
            sys.exit(EXIT_CONFIG)
    # jobs that fine-tune another arm's run find (and wait for) it through this, under any launcher
    os.environ[SWEEP_PLAN_ENV] = json.dumps(
        [{"arm": j.arm, "seed": j.seed, "preset": j.preset, "run_dir": str(j.run_dir)} for j in jobs if j.arm]
    )
    return jobs


def empty_sweep(master: DictConfig) -> str:
    """Why a sweep has no jobs: the swept key whose values expand to none (`seed=range(0,0)`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = master.hydra.sweeper.get("params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(master.hydra.overrides.task)
    for o in OverridesParser.create().parse_overrides(arguments):
        if o.is_sweep_override() and not list(o.sweep_string_iterator()):
            return f"config key '{o.get_key_element()}': {o.input_line} sweeps no values, so the sweep has no jobs"
    return "the sweep has no jobs"


def _jobs_text(jobs: list[Job], limit: int = 4) -> str:
    shown = ", ".join(f"#{j.num} [{j.label}]" for j in jobs[:limit])
    return shown + (f" and {len(jobs) - limit} more" if len(jobs) > limit else "")


def launcher_problem(master: DictConfig, jobs: list[Job]) -> str | None:
    """What would make every job of the sweep fail on this launcher, said once before any job starts (None: fine).

    Local launchers (basic, joblib, submitit_local) run jobs here: a CUDA job needs CUDA here, and a job spawning
    N ranks (train.processes) needs N devices. A SLURM launcher runs them elsewhere (this may be a login node
    without a GPU), so only its resources are checked: ranks = nodes x tasks_per_node must match each job's
    train.processes (one task per rank), or be 1 task with gpus_per_node >= train.processes (bnlab spawns)."""
    import torch

    from bnlab.train.distributed import backend_for

    launcher = master.hydra.get("launcher") or {}
    target = str(launcher.get("_target_", ""))
    if "SlurmLauncher" in target:
        ranks = int(launcher.get("nodes") or 1) * int(launcher.get("tasks_per_node") or 1)
        gpus = int(launcher.get("gpus_per_node") or 0)
        bad = [j for j in jobs if not (j.processes == ranks or (ranks == 1 and gpus >= j.processes))]
        if bad:
            need = sorted({j.processes for j in bad})
            return (
                f"config key 'train.processes': jobs {_jobs_text(bad)} need {'/'.join(map(str, need))} ranks, but "
                f"every job of this sweep gets nodes x tasks_per_node = {ranks} SLURM task(s) with "
                f"gpus_per_node={gpus} (hydra.launcher, set from the sweep's own train.processes): launch jobs "
                "with another train.processes as their own sweep (README, 'On a GPU box / on SLURM')"
            )
        return None
    cuda_jobs = [j for j in jobs if j.device.startswith("cuda")]
    if cuda_jobs and not torch.cuda.is_available():
        return (
            f"config key 'device': {cuda_jobs[0].device!r} requested but CUDA is not available here, for "
            f"{len(cuda_jobs)} of {len(jobs)} jobs ({_jobs_text(cuda_jobs, 2)}); a GPU preset runs on a machine "
            "with a GPU (or LAUNCHER=slurm from a login node); `bnlab plan` shows the sweep without one"
        )
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    short = [j for j in jobs if j.processes > 1 and backend_for(j.device) == "nccl" and j.processes > have]
    if short:
        return (
            f"config key 'train.processes': jobs {_jobs_text(short)} spawn {max(j.processes for j in short)} "
            f"ranks, one per CUDA device, and this machine has {have}: run them where there are enough GPUs"
        )
    return None
