"""bnlab: everything after training, from run directories to tables, figures, a report and BN health.

collect, figures, status, sync (per study), health (one run's checkpoint), report (every committed study).
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
    """The study whose runs an experiment writes (nbs_sync joins nbs); any other name is itself (results/grid.py)."""
    from bnlab.results.grid import joined_study as joined

    return joined(name)


def committed_results(study: str, preset: str) -> Path:
    """The committed results of a study: results/<study>/<preset> of this repository (what `bnlab report` shows)."""
    return REPO_ROOT / "results" / study / preset


def scratch_results(runs: str | Path, study: str, preset: str) -> Path:
    """Where collect/figures write unless asked otherwise: beside the runs, <runs>/<study>/_collected/<preset>."""
    return Path(runs) / study / "_collected" / preset


def _results_dir(args) -> Path:
    """--out (relative to the current directory, like --runs), --commit (the repository's committed results), or
    by default the scratch folder beside the runs: a new sweep never overwrites committed tables by itself."""
    if args.out:
        return Path(args.out)
    if args.commit:
        return committed_results(args.study, args.preset)
    return scratch_results(args.runs, args.study, args.preset)


def _where(out: Path, args) -> str:
    if args.commit:
        return f"{out} (the committed results: review with `git diff results/`)"
    if args.out:
        return str(out)
    return f"{out} (scratch; --commit writes {committed_results(args.study, args.preset)}, the committed results)"


def cmd_collect(args) -> None:
    from bnlab.results.collect import collect_study, save

    got = collect_study(args.runs, args.study, args.preset, include_all=args.all)
    for note in got.notes:
        print(f"[bnlab] {note}" if not note.startswith("  ") else note)
    if got.runs.empty:
        where = Path(args.runs) / args.study
        sys.exit(f"error: no runs of study {args.study} (preset {args.preset}) to collect under {where}")
    out = _results_dir(args)
    save(got.runs, got.epochs, out)
    counts = got.runs["status"].value_counts().to_dict()
    print(f"collected {len(got.runs)} runs ({counts}) and {len(got.epochs)} epoch rows -> {_where(out, args)}")


def cmd_figures(args) -> None:
    from bnlab.results.analysis import analyze

    out = _results_dir(args)
    for path in analyze(args.study, out, args.preset):
        print(path)
    print(f"[bnlab] tables and figures -> {_where(out, args)}")


def cmd_status(args) -> None:
    from bnlab.sweep import status_report

    print(status_report(Path(args.runs) / args.study))


def cmd_sync(args) -> None:
    from bnlab.results.collect import run_dirs
    from bnlab.train.run_dir import RunDir
    from bnlab.train.wandb_logger import sync_run

    study_dir = Path(args.runs) / args.study
    dirs = run_dirs(study_dir)
    if not dirs:
        sys.exit(f"error: no run directories under {study_dir}")
    for d in dirs:
        with RunDir(d).locked() as owned:  # a run training now writes its own W&B run: leave it alone
            print(sync_run(d) if owned else f"{d}: being trained now, skipped (its attempt logs to W&B itself)")
    print(f"[bnlab] offline runs: upload with `wandb sync {study_dir}/*/wandb/offline-run-*`")


def cmd_health(args) -> None:
    from bnlab.diagnostics.report import health_report

    print(health_report(Path(args.run_dir), args.overrides, args.batches))


def cmd_report(args) -> None:
    from bnlab.results.analysis import EXPERIMENTS_DIR
    from bnlab.results.claims import claim_rows, update_readme, verdict_text
    from bnlab.results.report import build_report

    experiments = Path(args.experiments) if args.experiments else EXPERIMENTS_DIR
    for claim, studies in claim_rows(experiments):
        print(f"{claim.id}: {claim.text}")
        for sc in studies:
            print("  " + verdict_text(sc).replace("\n", "\n  "))
            if update_readme(sc, experiments / sc.study / "README.md"):
                print(f"  (updated the computed verdict in {experiments / sc.study / 'README.md'})")
        if not studies:
            print("  no study yet")
    print(build_report(Path(args.results), Path(args.output), experiments))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="bnlab", description=__doc__, epilog=TRAINING, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    for name, fn, helptext in [
        ("collect", cmd_collect, "run directories -> runs/epochs tables"),
        ("figures", cmd_figures, "collected tables -> the study's tables and figures"),
        ("status", cmd_status, "completed / diverged / failed / interrupted runs"),
        ("sync", cmd_sync, "(re)build every run's W&B run from its metrics.csv and summary.json"),
    ]:
        s = sub.add_parser(name, help=helptext, description=helptext)
        s.add_argument("study", help=f"a study: {', '.join(studies())} (or any <runs>/<study> folder, e.g. nbs_demo)")
        s.add_argument("--runs", default="runs", help="root of run directories (config out_dir; relative to here)")
        s.add_argument("--preset", default="cpu", help="which scale preset's runs: cpu | gpu | none | all")
        if name in ("collect", "figures"):
            where = s.add_mutually_exclusive_group()
            where.add_argument(
                "--out",
                default=None,
                help="results folder, relative to here (default: <runs>/<study>/_collected/<preset>)",
            )
            where.add_argument(
                "--commit",
                action="store_true",
                help=f"write the committed results {REPO_ROOT / 'results'}/<study>/<preset> (`bnlab report`'s)",
            )
        if name == "collect":
            s.add_argument(
                "--all",
                action="store_true",
                help="also collect runs outside the study's sweep grid, each set labelled as its own `variant`",
            )
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
    args = p.parse_args(argv)
    if args.command in ("collect", "figures", "status", "sync"):
        study = joined_study(args.study)
        if study != args.study:
            print(f"[bnlab] {args.study}'s runs join study {study}: {args.command} of {study}")
            args.study = study
    args.fn(args)


if __name__ == "__main__":
    main()
