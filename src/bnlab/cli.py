"""bnlab: everything after training, from run directories to tables, figures, a report and BN health.

plan (a sweep's jobs, no training), collect, figures, status, sync (per study), health (one run's checkpoint), report
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
    from bnlab.results.collect import collect_study, save, select_runs

    got = collect_study(args.runs, args.study, args.preset, include_all=args.all)
    if args.where and not got.runs.empty:
        try:
            got = select_runs(got, args.where)
        except ValueError as e:
            raise UsageError(str(e)) from None
    for note in got.notes:
        print(f"[bnlab] {note}" if not note.startswith("  ") else note)
    if got.runs.empty:
        where = Path(args.runs) / args.study
        raise UsageError(f"no runs of study {args.study} (preset {args.preset}) to collect under {where}")
    out = _results_dir(args)
    save(got.runs, got.epochs, out)
    counts = got.runs["status"].value_counts().to_dict()
    print(f"collected {len(got.runs)} runs ({counts}) and {len(got.epochs)} epoch rows -> {_where(out, args)}")


def cmd_figures(args) -> None:
    from bnlab.results.analysis import analyze, load_study_module

    out = _results_dir(args)
    if not hasattr(load_study_module(args.study), "analyze_without_runs") and not (out / "runs.csv").exists():
        raise UsageError(f"no collected results in {out} (no runs.csv): run `bnlab collect {args.study}` first")

    out = _results_dir(args)
    written = analyze(args.study, out, args.preset)
    for path in written:
        print(path)
    print(f"[bnlab] tables and figures -> {_where(out, args)}")
    if args.wandb:  # one W&B run per study, its files kept beside the study's runs (not in committed results)
        from bnlab.results.wandb_figures import log_figures

        print(f"[bnlab] {log_figures(args.study, args.preset, written, Path(args.runs) / args.study / '_figures')}")


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


def cmd_sync(args) -> None:
    from bnlab.results.collect import run_dirs
    from bnlab.train.run_dir import RunDir
    from bnlab.train.wandb_logger import sync_run

    study_dir = Path(args.runs) / args.study
    dirs = run_dirs(study_dir)
    if not dirs:
        raise UsageError(f"no run directories under {study_dir} (studies: {', '.join(studies())})")
    for d in dirs:
        with RunDir(d).locked() as owned:  # a run training now writes its own W&B run: leave it alone
            print(sync_run(d) if owned else f"{d}: being trained now, skipped (its attempt logs to W&B itself)")
    print(f"[bnlab] offline runs: upload with `wandb sync {study_dir}/*/wandb/offline-run-*`")


def cmd_health(args) -> None:
    target = Path(args.target)
    if args.model is None:
        if args.data or args.images:
            raise UsageError("--data/--images are for a model bnlab did not build: give it with --model mod:callable")
        if target.is_file():
            raise UsageError(
                f"{target} is a file: a bnlab run directory is expected, or pass the model that the checkpoint "
                "belongs to with --model module:callable (and --data module:callable or --images DIR)"
            )
        from bnlab.diagnostics.report import health_report

        print(health_report(target, args.overrides, args.batches, Path(args.json) if args.json else None))
        return
    from bnlab.diagnostics.diagnose import HealthInputError
    from bnlab.diagnostics.foreign import foreign_report

    if args.overrides:
        raise UsageError(f"config overrides ({args.overrides[0]} ...) are for bnlab run directories, not --model")
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
        raise UsageError(f"{type(e).__name__}: {e}") from e
    print(f"checkpoint {args.target}, model {args.model}")
    print(report.text())
    if args.json:
        report.to_json(args.json)
        print(f"report written to {args.json}")


def cmd_report(args) -> None:
    from bnlab.results.analysis import EXPERIMENTS_DIR
    from bnlab.results.claim_tests import RULE_VERSION
    from bnlab.results.claims import claim_rows, update_readme, update_rules_block, verdict_text
    from bnlab.results.report import build_report

    results = Path(args.results)
    if not results.is_dir() or not any(p.suffix in (".png", ".md") for p in results.rglob("*")):
        print(
            f"warning: no tables or figures under {results}: the report holds only the claims table "
            "(its verdicts are the committed ones, not computed from these results)",
            file=sys.stderr,
        )
    experiments = Path(args.experiments) if args.experiments else EXPERIMENTS_DIR
    print(f"verdict rule {RULE_VERSION} (bnlab.results.claim_tests)")
    rows = claim_rows(experiments)
    if update_rules_block(rows, experiments / "README.md"):
        print(f"(updated the verdicts under each rule in {experiments / 'README.md'})")
    for claim, studies in rows:
        print(f"{claim.id}: {claim.text}")
        for sc in studies:
            print("  " + verdict_text(sc).replace("\n", "\n  "))
            if update_readme(sc, experiments / sc.study / "README.md"):
                print(f"  (updated the computed verdict in {experiments / sc.study / 'README.md'})")
        if not studies:
            print("  no study yet")
    print(build_report(Path(args.results), Path(args.output), experiments))


def cmd_readme_tables(args) -> None:
    from bnlab.results.analysis import EXPERIMENTS_DIR
    from bnlab.results.readme_tables import sync_readmes

    experiments = Path(args.experiments) if args.experiments else EXPERIMENTS_DIR
    stale = sync_readmes(experiments, check=args.check)
    for readme in stale:
        print(f"{readme}: setting table {'differs from the composed config' if args.check else 'regenerated'}")
    if args.check and stale:
        sys.exit(1)


class UsageError(Exception):
    """Bad input to a bnlab command: reported as one line, exit 2."""


def cmd_plan(args) -> None:
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from bnlab import CONF_DIR
    from bnlab.bench import OUT
    from bnlab.cost import measured_constants, present_gpu
    from bnlab.plan import format_plan, plan_jobs

    overrides = list(args.overrides)
    if overrides and "=" not in overrides[0]:  # `bnlab plan nbs --scale gpu`: a study's name first
        overrides[0] = f"experiment={overrides[0]}"
    if args.scale:
        overrides.append(f"scale={args.scale}")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration(config_name="train", overrides=overrides, run_mode=RunMode.MULTIRUN)
        if args.datasets:  # the sweep's dataset (arms keep the study's data): what `make sweep` must install
            print(master.data.name)
            return
        measured = measured_constants(present_gpu(), Path(args.bench) if args.bench else OUT)
        default_gpu = measured["gpu"] if measured else "A100"  # price this GPU where make bench measured it
        gpu = args.gpu or (default_gpu if str(master.get("device", "")).startswith("cuda") else None)
        jobs = plan_jobs(master, loader, costs=gpu is not None)
    retry = any(o in ("train.retry_failed=true", "train.retry_failed=True") for o in overrides)
    given = {"utilisation": args.utilisation, "op_us": args.op_us}
    assumed = {k: v if v is not None else (measured or {}).get(k) for k, v in given.items()}
    assumed = {k: v for k, v in assumed.items() if v is not None}
    source = f"measured on this {measured['gpu']} by make bench, {measured['path']}" if measured else "assumed"
    print(format_plan(jobs, retry_failed=retry, gpu=gpu, source=source, **assumed))
    if any(j.error for j in jobs):
        sys.exit(2)


def cmd_fetch(args) -> None:
    """Download a dataset once, before a sweep (the GPU presets read it with data.download=false): resumable,
    checksummed, and it says which folder the runs will read (src/bnlab/data/fetch.py)."""
    from omegaconf import OmegaConf

    from bnlab.data.fetch import Archive, archive_of, fetch

    if args.dataset in ("cifar10", "cifar100"):
        from bnlab.data.cifar import default_root, load_cifar
    else:
        from bnlab.data.imagenette import default_root, open_imagenette
    root = Path(args.root or default_root()).expanduser()
    archive = archive_of(args.dataset, args.variant)
    if args.url:  # a mirror: its own checksum, or none
        archive = Archive(args.url, args.md5, archive.folder)
    folder = fetch(archive, root)
    if args.dataset in ("cifar10", "cifar100"):  # torchvision's per-file md5s too
        train_x, _, test_x, _, _ = load_cifar(int(args.dataset[5:]), str(root), download=False)
        sizes = f"{len(train_x)} train / {len(test_x)} test images"
    else:
        dcfg = OmegaConf.create({"root": str(root), "download": False, "variant": args.variant})
        sizes = " / ".join(f"{len(open_imagenette(dcfg, split))} {split}" for split in ("train", "val")) + " images"
    print(f"{args.dataset}: {sizes} in {folder}; runs read it with data.root={root}")


def _add_study_commands(sub) -> None:
    """collect, figures, status, sync: one study's run directories."""
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
                "--where",
                action="append",
                metavar="KEY=VALUE",
                help="keep only the runs whose column KEY is VALUE (repeatable), e.g. train.processes=1: one table of "
                "a study whose runs several tables share (nbs and its Sync BN arm)",
            )
        if name == "figures":
            s.add_argument("--wandb", action="store_true", help="also log them to W&B: one run in the study's group "
                           "(offline unless WANDB_MODE=online), files under <runs>/<study>/_figures/")  # fmt: skip
        if name == "collect":
            s.add_argument(
                "--all",
                action="store_true",
                help="also collect runs outside the study's sweep grid, each set labelled as its own `variant`",
            )
        s.set_defaults(fn=fn)


def _add_health_command(sub) -> None:
    """health: a run directory, or any model's checkpoint with --model."""
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


def _add_report_and_plan_commands(sub) -> None:
    r = sub.add_parser("report", help="one self-contained HTML page with every study's tables and figures")
    r.add_argument("--results", default=str(REPO_ROOT / "results"))
    r.add_argument("--output", default=str(REPO_ROOT / "results" / "report.html"))
    r.add_argument("--experiments", default=None, help="folder of claims.yaml and <study>/claim.yaml files")
    r.set_defaults(fn=cmd_report)
    t = sub.add_parser(
        "readme-tables",
        help="write each study README's setting table (data, model, steps, batch, arms, seeds, images scored per "
        "scale) from the composed sweep config",
    )
    t.add_argument("--experiments", default=None, help="folder of <study>/README.md files")
    t.add_argument("--check", action="store_true", help="write nothing; exit 1 if a README's table is stale")
    t.set_defaults(fn=cmd_readme_tables)
    pl = sub.add_parser(
        "plan",
        help="a sweep's jobs, their run directories and state (completed / to do / failed / running), no training",
        description="Expand a sweep exactly as `python -m bnlab.train -m OVERRIDES` would, check every job's config "
        "and list job, state, what the sweep would do, run directory and swept values; nothing is trained. "
        "For a GPU preset also GPUs, optimizer steps and GPU-hours per job (src/bnlab/cost.py: measured FLOPs, "
        "datasheet peaks, an assumed utilisation). Exit 2 if any job is invalid. "
        "E.g. `bnlab plan nbs --scale gpu`, `bnlab plan experiment=nbs scale=cpu` (= `make plan EXP=nbs`).",
    )
    pl.add_argument("overrides", nargs="*", help="a study's name and/or the sweep's Hydra overrides, as given to `-m`")
    pl.add_argument("--scale", default=None, help="cpu | gpu: the preset (= scale=...; a study without it: cpu)")
    pl.add_argument("--gpu", default=None, help="GPU type whose GPU-hours each job line shows: V100, A100, L40S, H100 "
                    "(default A100 for a GPU preset; totals show every type)")  # fmt: skip
    pl.add_argument("--utilisation", type=float, default=None, help="fraction of peak FLOPS a job reaches (0.1, or "
                    "as measured on this GPU by make bench)")  # fmt: skip
    pl.add_argument("--datasets", action="store_true", help="only print the dataset the sweep reads (make sweep)")
    pl.add_argument("--op-us", type=float, default=None, help="microseconds per aten operator launched (10)")
    pl.add_argument("--bench", default=None, help="folder of make bench's plan_constants_<GPU>.json, used on that "
                    "GPU for --utilisation and --op-us (default results/bench)")  # fmt: skip
    pl.set_defaults(fn=cmd_plan)
    f = sub.add_parser("fetch", help="download CIFAR-10/100 or Imagenette once, where data.root will read it")
    f.add_argument("dataset", choices=["cifar10", "cifar100", "imagenette"])
    f.add_argument("--root", default=None, help="data.root (default: $BNLAB_CACHE/<name> or ~/.cache/bnlab/<name>)")
    f.add_argument("--variant", default="160px", help="imagenette: 160px | 320px | full (data.variant)")
    f.add_argument("--url", default=None, help="download from this mirror instead of the official archive")
    f.add_argument("--md5", default=None, help="with --url: the mirror archive's md5 (default: not checked)")
    f.set_defaults(fn=cmd_fetch)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="bnlab", description=__doc__, epilog=TRAINING, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    _add_study_commands(sub)
    _add_health_command(sub)
    _add_report_and_plan_commands(sub)
    args = p.parse_args(argv)
    if args.command in ("collect", "figures", "status", "sync"):
        study = joined_study(args.study)
        if study != args.study:
            print(f"[bnlab] {args.study}'s runs join study {study}: {args.command} of {study}")
            args.study = study
    from bnlab.entry_errors import USER_ERRORS, error_line

    try:
        args.fn(args)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - one line when it is the user's to fix
        got = error_line(e, (*USER_ERRORS, UsageError, FileNotFoundError))
        if got is None:
            raise
        print(got[0], file=sys.stderr)
        sys.exit(got[1])


if __name__ == "__main__":
    main()
