"""Pre-registration checked from git: a study whose tests' decisive fields changed after its runs' commit reads
"post hoc"; edits of non-decisive fields change nothing; every committed runs.csv records a commit in history."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest

from bnlab import REPO_ROOT
from bnlab.results.claims import claim_rows
from bnlab.results.preregistration import WORKING_TREE, commit_exists, registration, repo_root

CLAIMS = 'C1:\n  claim: "a claim"\n  source: "a talk"\n'
CLAIM = (
    'claim: C1\nsource: "s"\nours: "o"\nregime: "at toy scale"\nresults: results/toy\ntests:\n'
    "  - id: T1\n    what: {what}\n    metric: err\n    a: {{where: {{arm: x}}}}\n    b: {{where: {{arm: y}}}}\n"
    "    direction: less\n    min_effect: {min_effect}\n    min_effect_origin: {origin}\n"
)


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def _commit(repo: Path, message: str) -> str:
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", message)
    return _git(repo, "rev-parse", "HEAD")


def _claim(repo: Path, what="w", min_effect=0.01, origin="o") -> Path:
    path = repo / "experiments" / "toy" / "claim.yaml"
    path.write_text(CLAIM.format(what=what, min_effect=min_effect, origin=origin))
    return path


def _runs(repo: Path, commit: str) -> None:
    rows = [
        {"arm": arm, "seed": s, "err": 0.1 * (arm == "y") + 0.01 * s, "git_commit": commit}
        for arm in "xy"
        for s in range(5)
    ]
    pd.DataFrame(rows).to_csv(repo / "results" / "toy" / "runs.csv", index=False)


@pytest.fixture
def repo(tmp_path):
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@t")
    _git(tmp_path, "config", "user.name", "t")
    (tmp_path / "experiments" / "toy").mkdir(parents=True)
    (tmp_path / "results" / "toy").mkdir(parents=True)
    (tmp_path / "experiments" / "claims.yaml").write_text(CLAIMS)
    return tmp_path


def _study(repo: Path):
    return next(sc for _, scs in claim_rows(repo / "experiments", repo) for sc in scs)


def test_tests_declared_before_the_runs_stand_and_a_later_change_is_post_hoc(repo):
    claim = _claim(repo)
    declared = _commit(repo, "declare the tests")
    _runs(repo, declared)  # the runs ran from the declaring commit
    _commit(repo, "results")
    sc = _study(repo)
    assert not sc.post_hoc and sc.verdict == "reproduced" and sc.registration.declared_at == declared
    assert f"tests declared at {declared[:7]}" in sc.registration.line()

    _claim(repo, what="a clearer sentence", origin="the source's number")  # not decisive: no change
    _commit(repo, "reword")
    assert _study(repo).registration.declared_at == declared and not _study(repo).post_hoc

    _claim(repo, what="a clearer sentence", min_effect=0.02, origin="the source's number")  # decisive
    assert _study(repo).registration.declared_at == WORKING_TREE and _study(repo).post_hoc  # uncommitted
    changed = _commit(repo, "smallest effect after the results")
    sc = _study(repo)
    assert sc.post_hoc and sc.registration.declared_at == changed and sc.verdict == "post hoc"
    assert sc.verdict_line() == "post hoc (would read: reproduced)"
    assert "the tests changed after the runs" in sc.registration.line()

    _runs(repo, changed)  # the rerun from the commit that declared the new tests
    _commit(repo, "rerun")
    assert not _study(repo).post_hoc and claim.is_file()


def test_a_run_commit_missing_from_history_is_post_hoc(repo):
    _claim(repo)
    _commit(repo, "declare")
    _runs(repo, "7699a6ca7c" + "0" * 30)
    _commit(repo, "results from a commit that was never merged")
    sc = _study(repo)
    assert sc.post_hoc and "not in history" in sc.registration.line()


def test_without_git_the_check_says_so(tmp_path, monkeypatch):
    (tmp_path / "experiments" / "toy").mkdir(parents=True)
    (tmp_path / "results" / "toy").mkdir(parents=True)
    (tmp_path / "experiments" / "claims.yaml").write_text(CLAIMS)
    claim = _claim(tmp_path)
    _runs(tmp_path, "abc")
    assert repo_root(tmp_path) is None
    reg = registration(claim, tmp_path / "results" / "toy", ["runs.csv"])
    assert not reg.post_hoc and "no git repository" in reg.line()


def _committed_run_tables() -> list[Path]:
    out = subprocess.run(["git", "-C", str(REPO_ROOT), "ls-files", "results"], capture_output=True, text=True)
    return [REPO_ROOT / p for p in out.stdout.split() if p.endswith("runs.csv")]


def test_every_committed_runs_csv_records_commits_in_history():
    """A run's commit must exist (merged, never rebased away) for its pre-registration and a rerun to be checked."""
    tables = _committed_run_tables()
    assert tables, "no committed runs.csv found (not a git checkout?)"
    missing = []
    for csv in tables:
        runs = pd.read_csv(csv, usecols=lambda c: c == "git_commit", dtype=str)
        for commit in sorted({str(c) for c in runs.get("git_commit", pd.Series(dtype=str)).dropna()}):
            if not commit_exists(REPO_ROOT, commit):
                missing.append(f"{csv.relative_to(REPO_ROOT)}: {commit[:12]}")
    assert not missing, "runs.csv records commits that are not in history: " + "; ".join(missing)
