"""bnlab: everything after training, from run directories to tables, figures, a report and BN health.

plan (a sweep's jobs, no training), collect, figures, status (per study), health (one run's checkpoint), report
(every committed study). Bad input (an unknown study, a missing run, nothing collected yet) is one line, exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bnlab import REPO_ROOT

TRAINING = """training (Hydra, config in conf/train.yaml):
  one run:    bnlab-train [overrides]  (= python -m bnlab.train)   e.g. bnlab-train norm=ghost norm.nbs=16
  a study:    make sweep EXP=<study> SCALE=cpu       (= python -m bnlab.train -m experiment=<study> scale=cpu)
  then:       bnlab collect <study> && bnlab figures <study>"""


def studies() -> list[str]:
    """The studies defined in conf/experiment/ (a study's runs land in <runs>/<study>/)."""
    return sorted(p.stem for p in (REPO_ROOT / "conf" / "experiment").glob("*.yaml"))


def joined_study(name: str) -> str:
    """The study whose runs an experiment writes: its `study` key, or that of the experiment it builds on (nbs_sync
    lists nbs in its defaults and joins study nbs). Any other name (a folder like nbs_demo) is itself."""
    from omegaconf import OmegaConf

    path = REPO_ROOT / "conf" / "experiment" / f"{name}.yaml"
    if not path.exists():
        return name
    cfg = OmegaConf.load(path)
    if "study" in cfg:
        return str(cfg.study)
    bases = [d for d in cfg.get("defaults", []) if isinstance(d, str) and d != "_self_"]
    return joined_study(bases[0]) if bases else name


def _results_dir(args) -> Path:
    return Path(args.out) if args.out else REPO_ROOT / "results" / args.study / args.preset


def cmd_collect(args) -> None:
    from bnlab.results.collect import collect, save

    runs, epochs = collect(Path(args.runs) / args.study)
    if runs.empty:
        sys.exit(f"error: no run directories under {Path(args.runs) / args.study}")
    if args.preset != "all" and "preset" in runs:
        runs = runs[runs["preset"].astype(str) == args.preset]
        epochs = epochs[epochs["run_id"].isin(runs["run_id"])]
    out = _results_dir(args)
    save(runs, epochs, out)
    counts = runs["status"].value_counts().to_dict()
    print(f"collected {len(runs)} runs ({counts}) and {len(epochs)} epoch rows -> {out}/runs.csv, epochs.csv")


def cmd_figures(args) -> None:
    from bnlab.results.analysis import analyze, load_study_module

    out = _results_dir(args)
    if not hasattr(load_study_module(args.study), "analyze_without_runs") and not (out / "runs.csv").exists():
        raise UsageError(f"no collected results in {out} (no runs.csv): run `bnlab collect {args.study}` first")

    for path in analyze(args.study, _results_dir(args), args.preset):
        print(path)


def cmd_status(args) -> None:
    from bnlab.sweep import status_report

    study_dir = Path(args.runs) / args.study
    if not study_dir.is_dir():
        present = sorted(p.name for p in Path(args.runs).iterdir() if p.is_dir()) if Path(args.runs).is_dir() else []
        raise UsageError(
            f"no study {args.study!r} under {args.runs}/ (studies: {', '.join(studies())}; "
            f"run folders there: {', '.join(present) or 'none'})"
        )

    print(status_report(Path(args.runs) / args.study))


def cmd_health(args) -> None:
    from bnlab.diagnostics.report import health_report

    print(health_report(Path(args.run_dir), args.overrides, args.batches))


def cmd_report(args) -> None:
    from bnlab.results.analysis import EXPERIMENTS_DIR
    from bnlab.results.report import build_report

    results = Path(args.results)
    if not results.is_dir() or not any(p.suffix in (".png", ".md") for p in results.rglob("*")):
        print(
            f"warning: no tables or figures under {results}: the report holds only the claims table "
            "(its verdicts are the committed ones, not computed from these results)",
            file=sys.stderr,
        )
    experiments = Path(args.experiments) if args.experiments else EXPERIMENTS_DIR
    print(build_report(Path(args.results), Path(args.output), experiments))


class UsageError(Exception):
    """Bad input to a bnlab command: reported as one line, exit 2."""


def cmd_plan(args) -> None:
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from bnlab import CONF_DIR
    from bnlab.plan import format_plan, plan_jobs

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration(
            config_name="train", overrides=list(args.overrides), run_mode=RunMode.MULTIRUN
        )
        jobs = plan_jobs(master, loader)
    retry = any(o in ("train.retry_failed=true", "train.retry_failed=True") for o in args.overrides)
    print(format_plan(jobs, retry_failed=retry))
    if any(j.error for j in jobs):
        sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="bnlab", description=__doc__, epilog=TRAINING, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    for name, fn, helptext in [
        ("collect", cmd_collect, "run directories -> runs/epochs tables"),
        ("figures", cmd_figures, "collected tables -> the study's tables and figures"),
        ("status", cmd_status, "completed / diverged / failed / interrupted runs"),
    ]:
        s = sub.add_parser(name, help=helptext, description=helptext)
        s.add_argument("study", help=f"a study: {', '.join(studies())} (or any <runs>/<study> folder, e.g. nbs_demo)")
        s.add_argument("--runs", default="runs", help="root of run directories (config out_dir)")
        s.add_argument("--preset", default="cpu", help="which scale preset's runs: cpu | gpu | none | all")
        s.add_argument("--out", default=None, help="results folder (default results/<study>/<preset>)")
        s.set_defaults(fn=fn)
    h = sub.add_parser("health", help="BN health report of a run's saved checkpoint on its (or given) data")
    h.add_argument("run_dir", help="a run directory (holding config.yaml and checkpoint.pt)")
    h.add_argument("overrides", nargs="*", help="config overrides for the data, e.g. data.val_subset=5000")
    h.add_argument("--batches", type=int, default=8, help="training batches to measure batch statistics on")
    h.set_defaults(fn=cmd_health)
    r = sub.add_parser("report", help="one self-contained HTML page with every study's tables and figures")
    r.add_argument("--results", default=str(REPO_ROOT / "results"))
    r.add_argument("--output", default=str(REPO_ROOT / "results" / "report.html"))
    r.add_argument("--experiments", default=None, help="folder of claims.yaml and <study>/claim.yaml files")
    r.set_defaults(fn=cmd_report)
    pl = sub.add_parser(
        "plan",
        help="a sweep's jobs, their run directories and state (completed / to do / failed / running), no training",
        description="Expand a sweep exactly as `python -m bnlab.train -m OVERRIDES` would, check every job's config "
        "and list job, state, what the sweep would do, run directory and swept values; nothing is trained. "
        "Exit 2 if any job is invalid. E.g. `bnlab plan experiment=nbs scale=cpu` (= `make plan EXP=nbs`).",
    )
    pl.add_argument("overrides", nargs="*", help="the sweep's Hydra overrides, as given to `-m`")
    pl.set_defaults(fn=cmd_plan)
    args = p.parse_args(argv)
    if args.command in ("collect", "figures", "status"):
        study = joined_study(args.study)
        if study != args.study:
            print(f"[bnlab] {args.study}'s runs join study {study}: {args.command} of {study}")
            args.study = study
    from bnlab.config_errors import ConfigError
    from bnlab.train.checkpoint import CheckpointError

    try:
        args.fn(args)
    except (UsageError, ConfigError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
