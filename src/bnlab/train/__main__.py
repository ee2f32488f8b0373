"""Hydra entry point for one run: `python -m bnlab.train [overrides]` (config: conf/train.yaml).

Exit codes, the same for a single run and for a sweep under any launcher (basic, joblib, submitit_local):
0 every run completed (or was already), 1 a run failed (its traceback in the run's error.txt) or a file could not be
written, 2 bad input (a config key, a missing dataset, a corrupt checkpoint; one line naming it, nothing trained),
3 a single run diverged (recorded in its summary.json; a sweep goes on and lists it in its summary).
"""

from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from bnlab import CONF_DIR
from bnlab.entry_errors import EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_FAILED, USER_ERRORS, error_line
from bnlab.train.outcome import TERMINATED_EXIT, Terminated


def say_error(line: str) -> None:
    """Print a one-line error to stderr, once per run: of the ranks torchrun or SLURM started (each exports RANK,
    bnlab.train.distributed.launched_rank), only rank 0 speaks; every rank still exits with the code."""
    if int(os.environ.get("RANK") or 0) == 0:
        print(line, file=sys.stderr)


def _single_run_outcome(summary: dict) -> None:
    """A single run says how it ended: diverged (exit 3) or recorded failed earlier (exit 1)."""
    status, reason = summary.get("status"), summary.get("reason")
    where = summary.get("run_dir", "")
    if status == "diverged":
        print(f"[bnlab] diverged: {reason} (recorded in {where}/summary.json)", file=sys.stderr)
        sys.exit(EXIT_DIVERGED)
    if status == "failed":
        print(
            f"error: {where} is recorded as failed ({reason}); see its error.txt, rerun it with "
            "train.retry_failed=true",
            file=sys.stderr,
        )
        sys.exit(EXIT_FAILED)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def task(cfg: DictConfig) -> float | None:
    from bnlab.runner import run
    from bnlab.train.wandb_logger import run_labels

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    labels = run_labels(cfg, list(hydra_cfg.overrides.task), swept_keys(hydra_cfg) if multirun else None)
    try:
        if multirun:  # a job's error is raised to the launching process (picklable), which reports it as below
            summary = run(cfg, raise_on_failure=False, labels=labels)
        else:
            try:
                summary = run(cfg, raise_on_failure=True, labels=labels)
            except USER_ERRORS as e:
                say_error(f"error: {e}")
                sys.exit(EXIT_BAD_INPUT)
            _single_run_outcome(summary or {})
    except Terminated:  # SIGTERM: W&B flushed, last checkpoint kept; the same command (or a requeue) resumes
        if int(os.environ.get("RANK") or 0) == 0:  # once for the ranks an engine started
            print(f"[bnlab] terminated by SIGTERM: exit {TERMINATED_EXIT}; rerun the same command to resume")
        if os.environ.get("RANK") is not None:  # an engine's rank (torchrun, srun): stopped, its files written
            sys.stdout.flush()
            sys.stderr.flush()
            # no interpreter teardown: on a loaded machine it outlasted torchrun's 30 s grace, which then SIGKILLs
            # rank 0 (the lock goes) before the other ranks; the kernel drops this rank's locks as it exits
            os._exit(TERMINATED_EXIT)
        sys.exit(TERMINATED_EXIT)
    final = (summary or {}).get("final", {})
    return final.get("val_err_running")


def swept_keys(hydra_cfg) -> list[str]:
    """The keys this job's sweep varies: the study grid's (hydra.sweeper.params) and, set by the sweep callback in
    BNLAB_SWEPT_KEYS, those swept on the command line (`norm.nbs=4,32,256`), which a job's config no longer shows."""
    keys = list((hydra_cfg.sweeper.get("params") or {}).keys())
    keys += [k for k in os.environ.get("BNLAB_SWEPT_KEYS", "").split(",") if k]
    return list(dict.fromkeys(keys))


def report(e: BaseException) -> int | None:
    """One line for an error a user can fix (bnlab.entry_errors), the exit code; None for a bug (keep its traceback)."""
    got = error_line(e)
    if got is None:
        return None
    say_error(got[0])
    return got[1]


def main() -> None:
    """Run Hydra with its error report turned off, so that an error raised by a sweep's job (sent back by the
    joblib or submitit worker) is reported here the way a single run reports it; HYDRA_FULL_ERROR=1 in the
    environment keeps Hydra's full traceback for everything."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        task()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing (hydra._internal.utils.run_and_report)
    try:
        task()
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - reported in one line when it is the user's to fix
        code = report(e)
        if code is None:
            import traceback

            traceback.print_exc()
            code = EXIT_FAILED
        sys.exit(code)
    finally:
        os.environ.pop("HYDRA_FULL_ERROR", None)


if __name__ == "__main__":
    main()
