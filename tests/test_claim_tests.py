"""Claim tests: the statistics match scipy's own tests, each outcome and verdict follows the declared rule, and a
verdict changes when a committed metric does (it is computed, never typed)."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bnlab import REPO_ROOT
from bnlab.results.claim_tests import (
    RULE_VERSION,
    TestResult,
    TestSpecError,
    outcome,
    parse_tests,
    run_test,
    verdict,
    verdict_phrase,
)
from bnlab.results.claims import ClaimFileError, claim_rows, readme_block, update_readme


def _spec(**kw):
    base = {
        "id": "T",
        "what": "w",
        "metric": "err",
        "a": {"where": {"arm": "x"}},
        "b": {"where": {"arm": "y"}},
        "direction": "less",
    }
    return parse_tests([{**base, **kw}], "claim.yaml")[0]


def _table(tmp_path, a, b, seeds=None):
    seeds = seeds or list(range(len(a)))
    rows = [{"arm": "x", "seed": s, "err": v, "status": "completed"} for s, v in zip(seeds, a)]
    rows += [{"arm": "y", "seed": s, "err": v, "status": "completed"} for s, v in zip(seeds, b)]
    pd.DataFrame(rows).to_csv(tmp_path / "runs.csv", index=False)
    return tmp_path


A = [0.10, 0.12, 0.11, 0.13, 0.115]
B = [0.15, 0.16, 0.14, 0.17, 0.165]


def test_paired_test_matches_scipy(tmp_path):
    r = run_test(_spec(pairing="seed"), _table(tmp_path, A, B))
    ref = stats.ttest_rel(A, B)
    assert r.p == pytest.approx(ref.pvalue, rel=1e-9)
    ci = ref.confidence_interval(0.95)
    assert (r.ci_low, r.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert r.estimate == pytest.approx(np.mean(A) - np.mean(B)) and r.outcome == "supported" and r.n_a == 5


def test_welch_test_matches_scipy(tmp_path):
    r = run_test(_spec(pairing="none"), _table(tmp_path, A, B))
    ref = stats.ttest_ind(A, B, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert r.p == pytest.approx(ref.pvalue, rel=1e-9)
    assert (r.ci_low, r.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_one_sample_against_a_constant(tmp_path):
    spec = _spec(b={"value": 0.2}, direction="less")
    r = run_test(spec, _table(tmp_path, A, B))
    assert r.p == pytest.approx(stats.ttest_1samp(A, 0.2).pvalue, rel=1e-9) and r.outcome == "supported"


@pytest.mark.parametrize(
    ("direction", "estimate", "se", "min_effect", "expected"),
    [
        ("less", -0.05, 0.005, 0.01, "supported"),
        ("less", 0.05, 0.005, 0.01, "contradicted"),
        ("greater", 0.05, 0.005, 0.01, "supported"),
        ("greater", 0.005, 0.04, 0.01, "inconclusive"),
        ("greater", 0.004, 0.0005, 0.01, "not reproduced"),  # significant, but the whole CI is below what matters
        ("greater", 0.001, 0.002, 0.02, "not reproduced"),  # not significant, and an effect that matters is ruled out
        ("equal", 0.001, 0.001, 0.01, "supported"),  # 90% CI inside +-0.01
        ("equal", 0.05, 0.001, 0.01, "contradicted"),  # wholly outside the margin
        ("equal", 0.008, 0.004, 0.01, "inconclusive"),
    ],
)
def test_outcome_rule(direction, estimate, se, min_effect, expected):
    spec = _spec(direction=direction, min_effect=min_effect)
    word, low, high, p, note = outcome(spec, estimate, se, 4.0)
    assert word == expected
    assert low < estimate < high
    if expected == "inconclusive" and direction != "equal":
        assert "detects" in note  # the effect this n would detect


def test_too_few_seeds_is_exploratory_but_shows_the_numbers(tmp_path):
    r = run_test(_spec(), _table(tmp_path, A[:4], B[:4]))
    assert r.outcome == "too few seeds" and "would read: supported" in r.note and np.isfinite(r.ci_low)
    r1 = run_test(_spec(), _table(tmp_path, A[:1], B[:1]))
    assert r1.outcome == "too few seeds" and r1.note == "exploratory: one seed"


def test_missing_table_or_arm_is_not_run(tmp_path):
    assert run_test(_spec(), tmp_path).outcome == "not run"
    _table(tmp_path, A, B)
    assert run_test(_spec(a={"where": {"arm": "nope"}}), tmp_path).outcome == "not run"
    assert run_test(_spec(metric="no_such_column"), tmp_path).outcome == "not run"


def test_failed_runs_are_left_out(tmp_path):
    _table(tmp_path, A, B)
    t = pd.read_csv(tmp_path / "runs.csv")
    t.loc[0, "status"] = "diverged"
    t.to_csv(tmp_path / "runs.csv", index=False)
    assert run_test(_spec(), tmp_path).n_a == 4


def test_runs_outside_the_grid_are_left_out(tmp_path):
    _table(tmp_path, A, B)
    t = pd.read_csv(tmp_path / "runs.csv")
    t["variant"] = ""
    extra = t[t["arm"] == "x"].assign(variant="sampler.k=4", err=0.9)  # same arm and seeds, another setting
    pd.concat([t, extra]).to_csv(tmp_path / "runs.csv", index=False)
    r = run_test(_spec(), tmp_path)
    assert r.n_a == 5 and abs(r.estimate - (np.mean(A) - np.mean(B))) < 1e-12


def test_an_arm_pooling_two_runs_of_a_seed_is_not_run(tmp_path):
    """nbs's trap: its Sync BN runs (NBS 256 over 2 processes) collected into the NBS table put two runs of each seed
    in C1a's NBS 256 arm; averaging them would test an arm nobody declared, so the test is not run and names the key.
    A per-run table with several rows of one run (a spectrum's eigenvalues) is still averaged per seed."""
    _table(tmp_path, A, B)
    t = pd.read_csv(tmp_path / "runs.csv")
    t["run_id"] = [f"r{i}" for i in range(len(t))]
    t["train.processes"] = 1
    sync = t[t["arm"] == "y"].assign(run_id=lambda d: d["run_id"] + "s", **{"train.processes": 2})
    pd.concat([t, sync]).to_csv(tmp_path / "runs.csv", index=False)
    r = run_test(_spec(), tmp_path)
    assert r.outcome == "not run" and "2 runs of seed 0 in one arm" in r.note and "train.processes" in r.note
    narrowed = run_test(_spec(b={"where": {"arm": "y", "train.processes": 1}}), tmp_path)
    assert narrowed.outcome == "supported" and narrowed.estimate == pytest.approx(np.mean(A) - np.mean(B))

    rows = pd.concat([t.assign(k=k, err=t["err"] + k / 1000) for k in range(3)])  # 3 rows per run, one run per seed
    rows.to_csv(tmp_path / "spectra.csv", index=False)
    per_run = run_test(_spec(table="spectra.csv"), tmp_path)
    assert per_run.n_a == 5 and per_run.estimate == pytest.approx(np.mean(A) - np.mean(B))


def test_metric_may_be_an_expression_of_columns(tmp_path):
    pd.DataFrame(
        {
            "arm": ["x"] * 5 + ["y"] * 5,
            "seed": list(range(5)) * 2,
            "l/e": [1.0] * 10,
            "l/b": [0.5, 0.6, 0.4, 0.5, 0.55, 1.0, 1.0, 1.0, 1.0, 1.01],
        }
    ).to_csv(tmp_path / "runs.csv", index=False)
    r = run_test(_spec(metric="`l/e` - `l/b`", direction="greater"), tmp_path)
    assert r.outcome == "supported" and r.estimate == pytest.approx(0.49 + 0.002)


class _R:
    def __init__(self, outcome, claims=""):
        self.outcome = outcome
        self.spec = _spec(id=f"T{id(self)}", claims=claims, what=f"what {claims}")


@pytest.mark.parametrize(
    ("words", "v1", "v2"),
    [
        (["supported", "supported"], "reproduced", "reproduced"),
        (["supported", "inconclusive"], "partly", "partly"),
        (["supported", "contradicted"], "partly", "partly"),
        (["supported", "not reproduced"], "partly", "partly"),
        (["contradicted", "contradicted"], "contradicted", "contradicted"),
        (["not reproduced", "contradicted"], "contradicted", "contradicted"),  # one test against the claim
        (["not reproduced", "not reproduced"], "contradicted", "not reproduced"),  # none against it: rule 2 says so
        (["inconclusive", "not reproduced"], "inconclusive", "inconclusive"),
        (["inconclusive", "contradicted"], "partly", "contradicted"),
        (["supported", "too few seeds"], "exploratory", "exploratory"),
        (["supported", "not run"], "not run", "not run"),
        ([], "not run", "not run"),
    ],
)
def test_verdict_rules(words, v1, v2):
    """Rule 1 (kept to show what moved) and rule 2, in force: contradicted only with a test against the claim."""
    results = [_R(w) for w in words]
    assert verdict(results, rule=1) == v1 and verdict(results, rule=2) == v2 and RULE_VERSION == 2
    assert verdict(results) == v2


def test_the_verdict_lists_its_sub_claims_and_names_the_regime():
    results = [_R("supported", "BRN's gain"), _R("not reproduced", "BN's failure"), _R("inconclusive", "BN's failure")]
    assert verdict_phrase(results, "at this scale") == "partly: BRN's gain reproduced; BN's failure inconclusive"
    results[2] = _R("not reproduced", "BN's failure")
    phrase = verdict_phrase(results, "at this scale")
    assert phrase == "partly: BRN's gain reproduced; BN's failure not reproduced at this scale"
    both = [_R("not reproduced", "a"), _R("not reproduced", "b")]
    assert verdict_phrase(both, "at CPU scale") == "not reproduced at CPU scale"  # one word says it all
    assert verdict_phrase(both) == "not reproduced in this regime"
    assert isinstance(TestResult(_spec(), "supported").spec.sub_claim, str)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"direction": "smaller"}, "direction"),
        ({"pairing": "rank"}, "pairing"),
        ({"alpha": 0.9}, "alpha"),
        ({"direction": "equal", "min_effect": 0}, "min_effect"),
        ({"a": {"value": 1.0}}, "a.value"),
        ({"b": {"wher": {}}}, "b.wher"),
        ({"typo": 1}, "typo"),
    ],
)
def test_bad_declaration_names_the_field(change, field):
    with pytest.raises(TestSpecError, match=rf"field '{field}'"):
        _spec(**change)


def test_errors_survive_pickling():
    for err in (TestSpecError("claim.yaml", "alpha", "bad"), ClaimFileError("x/claim.yaml", "claim", "bad")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)


def test_changing_a_committed_metric_changes_the_verdict(tmp_path):
    """The nbs study's committed runs (4 seeds), tested with min_seeds 4 in a copy: NBS 2 vs 32 is supported; after
    swapping the two arms' val errors in the copy of runs.csv the same declared test is contradicted."""
    exp, res = tmp_path / "experiments", tmp_path / "results" / "nbs" / "cpu"
    (exp / "nbs").mkdir(parents=True)
    res.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "experiments" / "claims.yaml", exp / "claims.yaml")
    shutil.copy(REPO_ROOT / "results" / "nbs" / "cpu" / "runs.csv", res / "runs.csv")
    (exp / "nbs" / "claim.yaml").write_text(
        'claim: C1\nsource: "s"\nours: "o"\nresults: results/nbs/cpu\ntests:\n'
        "  - {id: L, what: left arm, metric: val_err_running, a: {where: {norm.nbs: 2}}, b: {where: {norm.nbs: 32}},"
        " direction: greater, min_effect: 0.003, min_seeds: 4}\n"
    )
    (exp / "nbs" / "README.md").write_text("# nbs\n")
    sc = next(s for _, scs in claim_rows(exp) for s in scs)
    assert sc.verdict == "reproduced" and sc.outcomes[0].outcome == "supported"
    assert not sc.post_hoc and "no git repository" in sc.registration.line()  # a copy outside git: said, not failed
    assert (
        update_readme(sc, exp / "nbs" / "README.md")
        and f"Computed verdict (rule {RULE_VERSION}): reproduced" in (exp / "nbs" / "README.md").read_text()
    )
    runs = pd.read_csv(res / "runs.csv")
    two, thirty_two = runs["norm.nbs"] == 2, runs["norm.nbs"] == 32
    v2 = runs.loc[two].sort_values("seed")["val_err_running"].to_numpy()
    v32 = runs.loc[thirty_two].sort_values("seed")["val_err_running"].to_numpy()
    runs.loc[runs.loc[two].sort_values("seed").index, "val_err_running"] = v32
    runs.loc[runs.loc[thirty_two].sort_values("seed").index, "val_err_running"] = v2
    runs.to_csv(res / "runs.csv", index=False)
    sc = next(s for _, scs in claim_rows(exp) for s in scs)
    assert sc.verdict == "contradicted"
    assert update_readme(sc, exp / "nbs" / "README.md")
    text = (exp / "nbs" / "README.md").read_text()
    assert "Computed verdict (rule 2): contradicted" in text and text.count("**Computed verdict") == 1  # replaced
    assert readme_block(sc) in text
