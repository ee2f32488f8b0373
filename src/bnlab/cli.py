"""bnlab: everything after training, from run directories to tables, figures, a report and BN health.

collect, figures, status (per study), health (one run's checkpoint), report (every committed study).
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
    from bnlab.results.analysis import analyze

    for path in analyze(args.study, _results_dir(args), args.preset):
        print(path)


def cmd_status(args) -> None:
    from bnlab.sweep import status_report

    print(status_report(Path(args.runs) / args.study))


def cmd_health(args) -> None:
    target = Path(args.target)
    if args.model is None:
        if args.data or args.images:
            sys.exit("error: --data/--images are for a model bnlab did not build: give it with --model module:callable")
        if target.is_file():
            sys.exit(
                f"error: {target} is a file: a bnlab run directory is expected, or pass the model that the checkpoint "
                "belongs to with --model module:callable (and --data module:callable or --images DIR)"
            )
        from bnlab.diagnostics.report import health_report

        print(health_report(target, args.overrides, args.batches, Path(args.json) if args.json else None))
        return
    from bnlab.diagnostics.diagnose import HealthInputError
    from bnlab.diagnostics.foreign import foreign_report

    if args.overrides:
        sys.exit(f"error: config overrides ({args.overrides[0]} ...) are for bnlab run directories, not --model")
    image_options = {
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "grayscale": args.grayscale,
        "normalize": not args.no_normalize,
    }
    try:
        report, _ = foreign_report(
            None if args.target == "-" else target,
            args.model,
            data=args.data,
            images=args.images,
            loss=args.loss,
            device=args.device,
            full_pickle=args.full_pickle,
            image_options=image_options,
            batches=args.batches,
            val_batches=args.val_batches,
        )
    except HealthInputError as e:
        sys.exit(f"error: {type(e).__name__}: {e}")
    print(f"checkpoint {args.target}, model {args.model}")
    print(report.text())
    if args.json:
        report.to_json(args.json)
        print(f"report written to {args.json}")


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
    ]:
        s = sub.add_parser(name, help=helptext, description=helptext)
        s.add_argument("study", help=f"a study: {', '.join(studies())} (or any <runs>/<study> folder, e.g. nbs_demo)")
        s.add_argument("--runs", default="runs", help="root of run directories (config out_dir)")
        s.add_argument("--preset", default="cpu", help="which scale preset's runs: cpu | gpu | none | all")
        s.add_argument("--out", default=None, help="results folder (default results/<study>/<preset>)")
        s.set_defaults(fn=fn)
    h = sub.add_parser(
        "health",
        help="BN health report of a saved checkpoint: a bnlab run's, or any model's with --model",
        description="BN health report of a bnlab run directory (its config, checkpoint and data), or of any "
        "model's checkpoint: bnlab health ckpt.pt --model mypkg.nets:build --data mypkg.data:batches "
        "(or --images DIR) [--json out.json]",
    )
    h.add_argument("target", help="a run directory (config.yaml, checkpoint.pt), or with --model a checkpoint file "
                   "('-': the model's own weights, no checkpoint)")  # fmt: skip
    h.add_argument("overrides", nargs="*", help="config overrides for a run's data, e.g. data.val_subset=5000")
    h.add_argument("--batches", type=int, default=8, help="training batches to measure batch statistics on")
    h.add_argument("--val-batches", type=int, default=8, help="validation batches (with --model)")
    h.add_argument("--json", default=None, help="also write the report, every figure per layer and channel, as JSON")
    g = h.add_argument_group("a model bnlab did not build")
    g.add_argument("--model", default=None, help="module:callable (or file.py:callable) returning the nn.Module")
    g.add_argument("--data", default=None, help="module:callable returning (train_batches, val_batches)")
    g.add_argument("--images", default=None, help="an image folder: DIR/train and DIR/val (or DIR for both)")
    g.add_argument("--loss", default=None, help="cross_entropy, mse or module:callable; default: compare outputs")
    g.add_argument("--device", default="cpu")
    g.add_argument("--full-pickle", action="store_true", help="allow a pickled model/objects (trusted files only)")
    g.add_argument("--batch-size", type=int, default=32, help="--images: images per batch")
    g.add_argument("--image-size", type=int, default=None, help="--images: resize and center-crop to this size")
    g.add_argument("--grayscale", action="store_true", help="--images: one channel")
    g.add_argument("--no-normalize", action="store_true", help="--images: no ImageNet mean/std normalization")
    h.set_defaults(fn=cmd_health)
    r = sub.add_parser("report", help="one self-contained HTML page with every study's tables and figures")
    r.add_argument("--results", default=str(REPO_ROOT / "results"))
    r.add_argument("--output", default=str(REPO_ROOT / "results" / "report.html"))
    r.add_argument("--experiments", default=None, help="folder of claims.yaml and <study>/claim.yaml files")
    r.set_defaults(fn=cmd_report)
    args = p.parse_args(argv)
    if args.command in ("collect", "figures", "status"):
        study = joined_study(args.study)
        if study != args.study:
            print(f"[bnlab] {args.study}'s runs join study {study}: {args.command} of {study}")
            args.study = study
    args.fn(args)


if __name__ == "__main__":
    main()
