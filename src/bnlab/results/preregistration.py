"""Were a study's tests declared before its runs? Checked from git, never typed.

A study's tests are declared at the commit that last changed their decisive fields (claim_tests.DECISIVE_KEYS of
every test, and the results folder they read): each version of `experiments/<study>/claim.yaml` in `git log` is
parsed and compared, so a comment, a `what`, `claims` or `min_effect_origin` edit is no change. Its runs were made
at the commits their `runs.csv` records (`git_commit`; an analysis without runs, its `provenance.json`). The tests
were declared before the runs when the declaring commit is an ancestor of (or equal to) every run commit; otherwise
(tests changed after the runs, decisive fields changed in the working tree, or a run commit missing from history)
the study's verdict is "post hoc" until rerun. Without git (a tarball) the check says so and decides nothing.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd
import yaml

from bnlab.results.claim_tests import DECISIVE_KEYS, MIN_SEEDS

LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built with it: a claim file's history is fast
WORKING_TREE = "working tree"  # the claim file's decisive fields differ from its last commit's
TEST_DEFAULTS = {"table": "runs.csv", "pairing": "seed", "alpha": 0.05, "min_effect": 0.0, "transform": "none"}


@dataclass(frozen=True)
class Registration:
    declared_at: str | None  # the commit that last changed the decisive fields, WORKING_TREE, or None (no git)
    run_commits: tuple[str, ...]  # the commits the runs record, sorted
    missing: tuple[str, ...] = ()  # run commits git does not know
    post_hoc: bool = False
    note: str = ""  # why the check could not decide (no git, no recorded commit)

    def line(self) -> str:
        if self.note:
            return f"pre-registration: {self.note}"
        runs = ", ".join(c[:7] + (" (not in history)" if c in self.missing else "") for c in self.run_commits)
        declared = self.declared_at if self.declared_at == WORKING_TREE else str(self.declared_at)[:7]
        state = "post hoc: the tests changed after the runs" if self.post_hoc else "tests declared before the runs"
        if self.missing:
            state = "post hoc: a run commit is not in history, so the order cannot be checked"
        return f"tests declared at {declared}, runs at {runs}: {state}"


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)


@lru_cache(maxsize=1)
def git_available() -> bool:
    try:
        return subprocess.run(["git", "--version"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def repo_root(path: Path) -> Path | None:
    """The git work tree holding `path`, or None (no git, or a folder outside any repository)."""
    if not git_available():
        return None
    out = _git(Path(path), "rev-parse", "--show-toplevel")
    return Path(out.stdout.strip()) if out.returncode == 0 else None


def commit_exists(root: Path, sha: str) -> bool:
    return _git(root, "cat-file", "-e", f"{sha}^{{commit}}").returncode == 0


def _arm(raw) -> tuple:
    raw = raw if isinstance(raw, dict) else {}
    where = tuple(sorted((str(k), str(v)) for k, v in (raw.get("where") or {}).items()))
    value = raw.get("value")
    return where, raw.get("metric"), None if value is None else float(value)


@lru_cache(maxsize=256)
def decisive(text: str | None) -> tuple | None:
    """What decides a claim file's verdict, comparable across versions: the results folder and each test's decisive
    fields (defaults filled in, arms normalised), as a sorted tuple; None for no file or no tests."""
    if text is None:
        return None
    try:
        data = yaml.load(text, Loader=LOADER)
    except yaml.YAMLError:
        return ("unparsable", text)
    if not isinstance(data, dict) or not isinstance(data.get("tests"), list):
        return None
    tests = []
    for t in data["tests"]:
        t = t if isinstance(t, dict) else {}
        fields = {**TEST_DEFAULTS, "min_seeds": MIN_SEEDS, **{k: t[k] for k in DECISIVE_KEYS if k in t}}
        fields["a"], fields["b"] = _arm(fields.get("a")), _arm(fields.get("b"))
        for k in ("alpha", "min_effect"):
            fields[k] = float(fields[k])
        fields["min_seeds"] = int(fields["min_seeds"])
        tests.append(tuple(repr(fields.get(k)) for k in DECISIVE_KEYS))
    return (str(data.get("results", "")).strip(), tuple(sorted(tests)))


def declared_at(root: Path, claim_file: Path) -> str | None:
    """The commit that last changed the claim file's decisive fields (WORKING_TREE when the file on disk differs
    from its last commit in them; None when git never saw it)."""
    rel = Path(claim_file).resolve().relative_to(root.resolve()).as_posix()
    shas = _git(root, "log", "--format=%H", "--", rel).stdout.split()
    if not shas:
        return None
    newer = decisive(Path(claim_file).read_text()) if Path(claim_file).is_file() else None
    newer_at = WORKING_TREE
    for sha in shas:
        shown = _git(root, "show", f"{sha}:{rel}")
        version = decisive(shown.stdout if shown.returncode == 0 else None)
        if version != newer:
            return newer_at
        newer_at = sha
    return newer_at  # the file's first commit already held these tests


def run_commits(results_dir: Path, tables: list[str]) -> tuple[str, ...]:
    """The commits recorded by the runs behind the tested tables: `git_commit` of the runs.csv beside each table
    (else of the results folder), else of the folder's provenance.json (an analysis without training runs)."""
    results_dir = Path(results_dir)
    commits: set[str] = set()
    for table in tables:
        folder = (results_dir / table).parent
        for candidate in (folder / "runs.csv", results_dir / "runs.csv"):
            if candidate.is_file():
                runs = pd.read_csv(candidate, usecols=lambda c: c == "git_commit", dtype=str)
                if "git_commit" in runs:
                    commits |= {str(c) for c in runs["git_commit"].dropna()}
                break
        else:
            for prov in (folder / "provenance.json", results_dir / "provenance.json"):
                if prov.is_file():
                    commit = json.loads(prov.read_text()).get("git_commit")
                    commits |= {str(commit)} if commit else set()
                    break
    return tuple(sorted(commits))


def registration(claim_file: Path, results_dir: Path, tables: list[str]) -> Registration:
    """Whether the tests in `claim_file` were declared before the runs behind `tables` (in `results_dir`)."""
    root = repo_root(Path(claim_file).parent)
    if root is None:
        return Registration(None, (), note="not checked: no git repository here (a tarball?)")
    commits = run_commits(results_dir, tables)
    declared = declared_at(root, Path(claim_file))
    if declared is None:
        return Registration(None, commits, post_hoc=True, note="post hoc: the claim file was never committed")
    if not commits:
        return Registration(declared, (), post_hoc=True, note="post hoc: the runs record no commit to check against")
    missing = tuple(c for c in commits if not commit_exists(root, c))
    if declared == WORKING_TREE:
        return Registration(declared, commits, missing, post_hoc=True)
    before = all(
        c not in missing and _git(root, "merge-base", "--is-ancestor", declared, c).returncode == 0 for c in commits
    )
    return Registration(declared, commits, missing, post_hoc=not before)
