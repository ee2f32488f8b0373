"""Claim tests declared before the runs, computed from committed results; the verdict follows from one rule.

Each study's `experiments/<study>/claim.yaml` declares its primary tests under `tests:` (see `TestSpec`): the metric,
two arms (rows of a committed table selected by `where`, or a constant `value`), the direction the source claims,
the pairing (by seed when the arms share seeds, Welch otherwise), alpha and the smallest effect that matters.
`run_test` computes the estimate (a - b), its 95% CI from the t distribution over seeds and a two-sided p;
`outcome` turns that into one word and `verdict` turns a study's outcomes into its verdict. Nobody types either.

The rule has a version (RULE_VERSION, printed by `bnlab report`); a change of rule is a new version, described
here, committed with its effect on every study (experiments/README.md, `bnlab verdicts --rules`).

Outcomes of one test (direction `less` / `greater`, effect = a - b in the claimed direction):
  supported       the (1 - alpha) CI excludes 0 on the claimed side and reaches the smallest effect that matters
  not reproduced  the CI's end on the claimed side lies below the smallest effect that matters: an effect of the
                  declared size is ruled out in this regime (whether or not the CI also excludes 0); rule 1 called
                  this `negligible`
  contradicted    the CI excludes 0 on the other side: a significant effect against the claim
  inconclusive    the CI includes 0 and reaches the smallest effect that matters (the note gives the effect this n
                  would detect with 80% power)
  too few seeds   an arm has fewer than `min_seeds` seeds (5): exploratory, no verdict
  not run         the table or an arm's rows are missing
Direction `equal` (an equivalence claim) is two one-sided tests against +-margin (= min_effect): `supported` when the
(1 - 2 alpha) CI lies inside the margin, `contradicted` when it lies wholly outside, else `inconclusive`.

Rule 1 (7 Dec 2026 and before), a study's verdict: `not run` (some test has no data), `exploratory` (some test has
too few seeds), `reproduced` (every test supported), `contradicted` (no test supported, and each one contradicted or
negligible), `inconclusive` (none supported or contradicted), `partly` (anything else). It called a claim whose
effect is merely smaller than declared "contradicted", though no test was significant against it.

Rule 2 (issue 32), a study's verdict, and each sub-claim's (the tests sharing a `claims:` label; a test without one
is its own sub-claim, named by its `what`):
  not run         some test has no data
  exploratory     some test has too few seeds
  reproduced      every test supported
  contradicted    some test contradicted (significant against the claim) and none supported
  not reproduced  every test `not reproduced`: the CIs rule out the claimed size in this regime (the verdict names
                  the regime, claim.yaml's `regime`), which says nothing of other regimes
  inconclusive    no test supported or contradicted, and not all ruled out
  partly          some test supported and some not: the verdict lists each sub-claim's word
A study whose tests' decisive fields last changed after the commit its runs record reads `post hoc` (an exploratory
verdict until rerun; bnlab.results.preregistration), with the verdict it would have in parentheses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

DIRECTIONS = ("less", "greater", "equal")
PAIRINGS = ("seed", "none")
TRANSFORMS = ("none", "log10")
RULE_VERSION = 2  # the verdict rule in force (the module docstring describes every version)
NOT_REPRODUCED = "not reproduced"  # the CI rules out the declared size here (rule 1's "negligible")
OUTCOMES = ("supported", NOT_REPRODUCED, "contradicted", "inconclusive", "too few seeds", "not run")
VERDICTS = (
    "reproduced",
    "partly",
    "inconclusive",
    NOT_REPRODUCED,
    "contradicted",
    "post hoc",
    "exploratory",
    "not run",
)
MIN_SEEDS = 5
POWER = 0.8  # for the detectable effect of an inconclusive test
ARM_KEYS = ("where", "metric", "value")
TEST_KEYS = (
    "id",
    "what",
    "table",
    "metric",
    "a",
    "b",
    "direction",
    "pairing",
    "alpha",
    "min_effect",
    "min_effect_origin",
    "transform",
    "min_seeds",
    "claims",
)
DECISIVE_KEYS = ("table", "metric", "a", "b", "direction", "pairing", "alpha", "min_effect", "transform", "min_seeds")


class TestSpecError(ValueError):
    """A declared test with a missing or bad field: names the test and the field."""

    __test__ = False  # not a pytest test class

    def __init__(self, where: str, field_name: str, problem: str):
        super().__init__(where, field_name, problem)  # all arguments in args: the error pickles (joblib workers)

    def __str__(self) -> str:
        where, field_name, problem = self.args
        return f"{where}: field '{field_name}': {problem}"


@dataclass(frozen=True)
class Arm:
    where: dict = field(default_factory=dict)  # column -> value (compared as text): the rows of this arm
    metric: str | None = None  # column; None = the test's metric
    value: float | None = None  # a constant instead of rows (one-sample test)

    def label(self, metric: str) -> str:
        if self.value is not None:
            return f"{self.value:g}"
        sel = ", ".join(f"{k}={v}" for k, v in self.where.items())
        return f"{self.metric or metric} [{sel}]" if sel else (self.metric or metric)


@dataclass(frozen=True)
class TestSpec:
    __test__ = False  # not a pytest test class

    id: str
    what: str  # the claim this test checks, one line
    table: str  # a CSV in the study's results folder (runs.csv or a per-run table an analysis writes)
    metric: str
    a: Arm
    b: Arm
    direction: str  # the source's claim about a - b: less (< 0), greater (> 0), equal (within +-min_effect)
    pairing: str = "seed"
    alpha: float = 0.05
    min_effect: float = 0.0  # smallest effect that matters, in the metric's (transformed) units; the margin for `equal`
    min_effect_origin: str = ""  # where min_effect comes from: the source's number, or why the source gives none
    transform: str = "none"  # log10: compare orders of magnitude (eigenvalues, learning rates)
    min_seeds: int = MIN_SEEDS
    claims: str = ""  # the sub-claim this test checks, a short label shared by its tests (not decisive)

    @property
    def sub_claim(self) -> str:
        return self.claims or self.what


@dataclass(frozen=True)
class TestResult:
    __test__ = False  # not a pytest test class

    spec: TestSpec
    outcome: str
    n_a: int = 0
    n_b: int = 0
    estimate: float = math.nan  # mean of a - b (paired) or difference of means (Welch)
    ci_low: float = math.nan
    ci_high: float = math.nan
    p: float = math.nan
    note: str = ""

    def numbers(self) -> str:
        """The estimate, its CI, p and n in one phrase ("" when not run)."""
        s = self.spec
        if self.outcome == "not run":
            return ""
        unit = " (log10)" if s.transform == "log10" else ""
        n = f"n = {self.n_a}" + ("" if s.pairing == "seed" or s.b.value is not None else f" / {self.n_b}")
        if not math.isfinite(self.ci_low):
            return f"a - b = {self.estimate:+.4g}{unit}, {n}"
        return (
            f"a - b = {self.estimate:+.4g}{unit}, 95% CI [{self.ci_low:.4g}, {self.ci_high:.4g}], p = {self.p:.2g}, {n}"
        )

    def line(self) -> str:
        s = self.spec
        if self.outcome == "not run":
            return f"{s.id}: {s.what}: not run ({self.note})"
        extra = f"; {self.note}" if self.note else ""
        return f"{s.id}: {s.what}: {self.numbers()} -> {self.outcome}{extra}"


def _arm(raw, where: str, name: str) -> Arm:
    if not isinstance(raw, dict) or not raw:
        raise TestSpecError(where, name, "a mapping with `where` (column: value) and/or `metric`, or a `value`")
    unknown = set(raw) - set(ARM_KEYS)
    if unknown:
        raise TestSpecError(where, f"{name}.{sorted(unknown)[0]}", f"unknown (allowed: {', '.join(ARM_KEYS)})")
    value = raw.get("value")
    if value is not None and not isinstance(value, (int, float)):
        raise TestSpecError(where, f"{name}.value", f"must be a number, got {value!r}")
    sel = raw.get("where") or {}
    if not isinstance(sel, dict):
        raise TestSpecError(where, f"{name}.where", "must map columns to values")
    return Arm(
        where={str(k): v for k, v in sel.items()},
        metric=raw.get("metric"),
        value=None if value is None else float(value),
    )


def parse_tests(raw, where: str) -> list[TestSpec]:
    """The `tests:` list of a claim file, checked field by field."""
    if not isinstance(raw, list) or not raw:
        raise TestSpecError(where, "tests", "a non-empty list of declared tests")
    specs = []
    for i, t in enumerate(raw):
        at = f"{where}: tests[{i}]"
        if not isinstance(t, dict):
            raise TestSpecError(at, "(entry)", "must be a mapping")
        unknown = set(t) - set(TEST_KEYS)
        if unknown:
            raise TestSpecError(at, sorted(unknown)[0], f"unknown field (allowed: {', '.join(TEST_KEYS)})")
        for key in ("id", "what", "metric", "a", "b", "direction"):
            if t.get(key) in (None, ""):
                raise TestSpecError(at, key, "missing")
        checks = (("direction", DIRECTIONS), ("pairing", PAIRINGS), ("transform", TRANSFORMS))
        for key, allowed in checks:
            if key in t and t[key] not in allowed:
                raise TestSpecError(at, key, f"{t[key]!r} is not one of {', '.join(allowed)}")
        alpha = float(t.get("alpha", 0.05))
        if not 0 < alpha < 0.5:
            raise TestSpecError(at, "alpha", f"must be in (0, 0.5), got {alpha}")
        min_effect = float(t.get("min_effect", 0.0))
        if min_effect < 0 or (t["direction"] == "equal" and min_effect <= 0):
            raise TestSpecError(at, "min_effect", "must be >= 0 (> 0: the equivalence margin of direction equal)")
        a, b = _arm(t["a"], at, "a"), _arm(t["b"], at, "b")
        if a.value is not None:
            raise TestSpecError(at, "a.value", "arm a must select rows (a constant goes in b)")
        specs.append(
            TestSpec(
                id=str(t["id"]),
                what=str(t["what"]),
                table=str(t.get("table", "runs.csv")),
                metric=str(t["metric"]),
                a=a,
                b=b,
                direction=t["direction"],
                pairing=t.get("pairing", "seed"),
                alpha=alpha,
                min_effect=min_effect,
                min_effect_origin=str(t.get("min_effect_origin", "")),
                transform=t.get("transform", "none"),
                min_seeds=int(t.get("min_seeds", MIN_SEEDS)),
                claims=str(t.get("claims", "")),
            )
        )
    ids = [s.id for s in specs]
    if len(set(ids)) != len(ids):
        raise TestSpecError(where, "tests", f"test ids must be unique, got {ids}")
    return specs


class PooledRuns(ValueError):
    """An arm of a runs table holds several runs of one seed: its `where` does not pin down one configuration."""


def _one_run_per_seed(rows: pd.DataFrame) -> None:
    """In a table of runs (a `run_id` column), an arm has one run per seed. Two runs of one seed differ in a config
    key the arm does not name (nbs's NBS 256 in one process and as Sync BN over two, collected into one table):
    averaging them would test another arm than the one declared, so the test is not run, naming the keys."""
    if "run_id" not in rows or "seed" not in rows or rows.empty:
        return
    per_seed = rows.groupby(rows["seed"].astype(str))["run_id"].nunique()
    if (per_seed <= 1).all():
        return
    seed = per_seed.idxmax()
    mine = rows[rows["seed"].astype(str) == seed]
    keys = [c for c in mine.columns if "." in str(c) and mine[c].astype(str).nunique() > 1]
    raise PooledRuns(
        f"{per_seed.max()} runs of seed {seed} in one arm (they differ in {', '.join(keys) or 'no config key'}): "
        "name the key in the arm's `where`, or collect one table per arm set (bnlab collect --where)"
    )


def _rows(table: pd.DataFrame, arm: Arm, metric: str, transform: str) -> pd.Series:
    """One value per seed: the arm's rows (completed grid runs only, where the table says), averaged per seed."""
    rows = table
    if "status" in rows:
        rows = rows[rows["status"].astype(str) == "completed"]
    if "variant" in rows:  # runs outside the study's grid (collect --all) are exploratory, never in a declared test
        rows = rows[rows["variant"].isna() | (rows["variant"].astype(str) == "")]
    for col, want in arm.where.items():
        if col not in rows:
            raise KeyError(f"column {col!r}")
        rows = rows[rows[col].astype(str) == str(want)]
    _one_run_per_seed(rows)
    col = arm.metric or metric
    if col in rows:
        values = pd.to_numeric(rows[col], errors="coerce")
    else:  # an expression of columns, e.g. "`val_loss_running` - `val_loss_batch`" (backticks around odd names)
        try:
            values = pd.to_numeric(rows.eval(col), errors="coerce")
        except Exception as e:  # pandas raises many kinds for an unknown name or bad syntax
            raise KeyError(f"column or expression {col!r} ({type(e).__name__})") from e
    if transform == "log10":
        values = np.log10(values.where(values > 0))
    seeds = rows["seed"] if "seed" in rows else pd.Series(range(len(rows)), index=rows.index)
    values = values[np.isfinite(values)]
    return values.groupby(seeds.loc[values.index].astype(str)).mean()


def mean_ci(d, alpha: float = 0.05) -> tuple[float, float, float, float]:
    """Mean of per-seed values (e.g. paired differences), its (1 - alpha) CI from the t distribution over seeds,
    and the two-sided p of mean = 0: the interval every declared test reports, for analyses that need it too."""
    d = np.asarray(d, dtype=float)
    se = d.std(ddof=1) / math.sqrt(len(d))
    if se == 0:
        return d.mean(), d.mean(), d.mean(), float(d.mean() == 0)
    half = stats.t.ppf(1 - alpha / 2, len(d) - 1) * se
    return d.mean(), d.mean() - half, d.mean() + half, float(2 * stats.t.sf(abs(d.mean()) / se, len(d) - 1))


def _differences(spec: TestSpec, a: pd.Series, b: pd.Series | None) -> tuple[float, float, float, int, int]:
    """(estimate, standard error, degrees of freedom, n_a, n_b) of a - b."""
    if b is None:  # one sample against a constant
        return a.mean() - spec.b.value, a.std(ddof=1) / math.sqrt(len(a)), len(a) - 1, len(a), 0
    if spec.pairing == "seed":
        common = a.index.intersection(b.index)
        d = a.loc[common] - b.loc[common]
        return d.mean(), d.std(ddof=1) / math.sqrt(len(d)), len(d) - 1, len(d), len(d)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if va + vb > 0 else len(a) + len(b) - 2
    return a.mean() - b.mean(), se, df, len(a), len(b)


def outcome(spec: TestSpec, estimate: float, se: float, df: float) -> tuple[str, float, float, float, str]:
    """(outcome, CI low, CI high, p, note) from an estimate of a - b and its standard error."""
    if se == 0:  # every seed gave the same difference: the interval is a point
        low = high = estimate
        p = 0.0 if estimate != 0 else 1.0
    else:
        half = stats.t.ppf(1 - spec.alpha / 2, df) * se
        low, high = estimate - half, estimate + half
        p = float(2 * stats.t.sf(abs(estimate) / se, df))
    if spec.direction == "equal":
        half90 = stats.t.ppf(1 - spec.alpha, df) * se if se > 0 else 0.0
        lo90, hi90 = estimate - half90, estimate + half90
        m = spec.min_effect
        note = f"TOST margin +-{m:g}: {100 * (1 - 2 * spec.alpha):.0f}% CI [{lo90:.4g}, {hi90:.4g}]"
        if -m < lo90 and hi90 < m:
            return "supported", low, high, p, note + " inside (equivalent)"
        if lo90 >= m or hi90 <= -m:
            return "contradicted", low, high, p, note + " outside (different)"
        return "inconclusive", low, high, p, note
    sign = 1.0 if spec.direction == "greater" else -1.0
    lo_c, hi_c = sorted((sign * low, sign * high))  # the CI in the claimed direction: > 0 means as claimed
    if lo_c > 0:
        if hi_c < spec.min_effect:
            note = f"smaller than the smallest effect that matters ({spec.min_effect:g})"
            return NOT_REPRODUCED, low, high, p, note
        return "supported", low, high, p, ""
    if hi_c < 0:
        return "contradicted", low, high, p, ""
    if hi_c < spec.min_effect:
        note = f"the CI rules out an effect of {spec.min_effect:g} or more on the claimed side"
        return NOT_REPRODUCED, low, high, p, note
    detectable = (stats.t.ppf(1 - spec.alpha / 2, df) + stats.t.ppf(POWER, df)) * se
    return "inconclusive", low, high, p, f"this n detects {detectable:.3g} with {POWER:.0%} power"


def run_test(spec: TestSpec, results_dir: Path) -> TestResult:
    """Compute one declared test from the committed table in `results_dir`."""
    path = Path(results_dir) / spec.table
    if not path.is_file():
        return TestResult(spec, "not run", note=f"{path} is missing")
    table = pd.read_csv(path)
    try:
        a = _rows(table, spec.a, spec.metric, spec.transform)
        b = None if spec.b.value is not None else _rows(table, spec.b, spec.metric, spec.transform)
    except KeyError as e:
        return TestResult(spec, "not run", note=f"{spec.table} has no {e.args[0]}")
    except PooledRuns as e:
        return TestResult(spec, "not run", note=f"{spec.table}: {e}")
    if spec.pairing == "seed" and b is not None:
        common = a.index.intersection(b.index)
        a, b = a.loc[common], b.loc[common]
    if len(a) == 0 or (b is not None and len(b) == 0):
        return TestResult(spec, "not run", note=f"no completed runs of an arm in {spec.table}")
    n_b = 0 if b is None else len(b)
    n_min = min(len(a), n_b) if b is not None else len(a)
    if n_min < 2:
        est = a.mean() - (spec.b.value if b is None else b.mean())
        return TestResult(spec, "too few seeds", len(a), n_b, estimate=float(est), note="exploratory: one seed")
    estimate, se, df, n_a, n_b = _differences(spec, a, b)
    word, low, high, p, note = outcome(spec, float(estimate), float(se), float(df))
    if n_min < spec.min_seeds:  # the numbers are shown, the outcome is not claimed
        return TestResult(
            spec,
            "too few seeds",
            n_a,
            n_b,
            float(estimate),
            float(low),
            float(high),
            float(p),
            f"exploratory: {n_min} seeds < {spec.min_seeds} (would read: {word})",
        )
    return TestResult(spec, word, n_a, n_b, float(estimate), float(low), float(high), float(p), note)


def verdict_v1(words: list[str]) -> str:
    """Rule 1 (kept to show what a rule change moved): an effect smaller than declared counted as contradicted."""
    words = ["negligible" if w == NOT_REPRODUCED else w for w in words]
    if not words or "not run" in words:
        return "not run"  # a verdict from some of the declared tests would say more than the runs do
    if "too few seeds" in words:
        return "exploratory"
    if all(w == "supported" for w in words):
        return "reproduced"
    if all(w in ("contradicted", "negligible") for w in words):
        return "contradicted"
    if not any(w in ("supported", "contradicted") for w in words):
        return "inconclusive"
    return "partly"


def verdict_v2(words: list[str]) -> str:
    """Rule 2: contradicted needs a test significant against the claim; a ruled-out size is `not reproduced`."""
    if not words or "not run" in words:
        return "not run"
    if "too few seeds" in words:
        return "exploratory"
    if all(w == "supported" for w in words):
        return "reproduced"
    if "supported" in words:
        return "partly"
    if "contradicted" in words:
        return "contradicted"
    if all(w == NOT_REPRODUCED for w in words):
        return NOT_REPRODUCED
    return "inconclusive"


RULES = {1: verdict_v1, 2: verdict_v2}


def verdict(results: list[TestResult], rule: int = RULE_VERSION) -> str:
    """The study's verdict from its primary tests' outcomes (the rule in this module's docstring)."""
    return RULES[rule]([r.outcome for r in results])


def sub_claims(results: list[TestResult], rule: int = RULE_VERSION) -> list[tuple[str, str]]:
    """(label, verdict) per sub-claim, in the order its first test is declared."""
    groups: dict[str, list[TestResult]] = {}
    for r in results:
        groups.setdefault(r.spec.sub_claim, []).append(r)
    return [(label, verdict(rs, rule)) for label, rs in groups.items()]


def verdict_phrase(results: list[TestResult], regime: str = "", rule: int = RULE_VERSION) -> str:
    """The verdict in words: its word, then (when the tests check more than one sub-claim) each sub-claim's, e.g.
    "partly: BRN's gain reproduced; BN's non-i.i.d. failure not reproduced at this scale"."""
    word = verdict(results, rule)
    where = f" {regime}" if regime else " in this regime"
    subs = sub_claims(results, rule)
    if word in ("not run", "exploratory") or len({w for _, w in subs}) < 2:  # one word says it all
        return word + (where if word == NOT_REPRODUCED else "")
    parts = [f"{label} {w}{where if w == NOT_REPRODUCED else ''}" for label, w in subs]
    return f"{word}: " + "; ".join(parts)
