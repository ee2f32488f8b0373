"""The claims C1-C8 and each study's tests of one, read from small YAML files; verdicts are computed, never typed.

`experiments/claims.yaml` lists the claims (id -> one-line claim and its source). Each study that tests one
writes `experiments/<study>/claim.yaml`: the claim id, the source's result and our setting in one line each, the
regime a "not reproduced" is bounded by (optional, one line), the committed results folder its tests read, and the
tests themselves, declared before the runs (bnlab.results.claim_tests). The verdict is computed from those tests
on the committed tables; git says whether the tests were declared before the runs (bnlab.results.preregistration).
A claim no study names is reported as "no study yet".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from bnlab.results.claim_tests import RULE_VERSION, TestResult, TestSpec, parse_tests, run_test, verdict, verdict_phrase
from bnlab.results.preregistration import Registration, registration

NO_STUDY = "no study yet"
ONE_LINE_FIELDS = ("claim", "source", "ours", "results")
OPTIONAL_ONE_LINE = ("regime",)  # e.g. "at CPU scale (an MLP on 500 glyph classes)": where a size was ruled out
CLAIM_FIELDS = (*ONE_LINE_FIELDS, *OPTIONAL_ONE_LINE, "tests")


class ClaimFileError(ValueError):
    """A claim file with a missing or bad field: names the file and the field."""

    def __init__(self, path, field_name: str, problem: str):
        super().__init__(str(path), field_name, problem)  # every argument in args: the error pickles

    def __str__(self) -> str:
        path, field_name, problem = self.args
        return f"{path}: field '{field_name}': {problem}"

    path = property(lambda self: self.args[0])
    field = property(lambda self: self.args[1])
    problem = property(lambda self: self.args[2])

    def __reduce__(self):  # picklable (the default would call __init__ with the message alone)
        return type(self), (self.path, self.field, self.problem)


@dataclass(frozen=True)
class Claim:
    id: str
    text: str
    source: str


@dataclass(frozen=True)
class StudyClaim:
    study: str
    claim: str  # a Claim id
    source: str  # the source's result, one line
    ours: str  # our setting (model, data, steps, seeds), one line: the numbers come from the tests
    results: str  # the committed results folder the tests read, relative to the repository root
    tests: tuple[TestSpec, ...] = ()
    outcomes: tuple[TestResult, ...] = field(default=(), compare=False)
    regime: str = ""
    registration: Registration | None = field(default=None, compare=False)

    @property
    def post_hoc(self) -> bool:
        return self.registration is not None and self.registration.post_hoc

    @property
    def tested_verdict(self) -> str:
        """What the tests say, whether or not they were declared before the runs."""
        return verdict(list(self.outcomes))

    @property
    def verdict(self) -> str:
        return "post hoc" if self.post_hoc else self.tested_verdict

    def verdict_line(self, rule: int = RULE_VERSION) -> str:
        """The verdict with its sub-claims, e.g. "partly: BRN's gain reproduced; BN's failure not reproduced ..."."""
        phrase = verdict_phrase(list(self.outcomes), self.regime, rule)
        return f"post hoc (would read: {phrase})" if self.post_hoc else phrase


def _load_mapping(path: Path) -> dict:
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    if not isinstance(data, dict):
        raise ClaimFileError(path, "(top level)", "must be a mapping")
    return data


def load_claims(experiments_dir: Path) -> list[Claim]:
    """The claims in `experiments/claims.yaml`, in file order."""
    path = Path(experiments_dir) / "claims.yaml"
    claims = []
    for cid, entry in _load_mapping(path).items():
        if not isinstance(entry, dict) or not entry.get("claim") or not entry.get("source"):
            raise ClaimFileError(path, str(cid), "needs a one-line 'claim' and its 'source'")
        claims.append(Claim(str(cid), str(entry["claim"]), str(entry["source"])))
    return claims


def load_study_claim(path: Path, claim_ids: set[str], root: Path | None = None) -> StudyClaim:
    """One study's claim.yaml, checked, with its tests computed on the results folder (relative to `root`, the
    repository root by default: the parent of the experiments folder)."""
    path = Path(path)
    root = Path(root) if root is not None else path.parent.parent.parent
    data = _load_mapping(path)
    unknown = set(data) - set(CLAIM_FIELDS)
    if unknown:
        raise ClaimFileError(path, sorted(unknown)[0], f"unknown field (allowed: {', '.join(CLAIM_FIELDS)})")
    for name in (*ONE_LINE_FIELDS, *(k for k in OPTIONAL_ONE_LINE if k in data)):
        value = data.get(name)
        if not isinstance(value, str) or not value.strip():
            raise ClaimFileError(path, name, "missing or empty (a one-line string)")
        if "\n" in value.strip():
            raise ClaimFileError(path, name, "must be one line")
    if data["claim"] not in claim_ids:
        raise ClaimFileError(path, "claim", f"{data['claim']!r} is not in claims.yaml ({', '.join(sorted(claim_ids))})")
    specs = tuple(parse_tests(data.get("tests"), str(path)))
    results_dir = root / data["results"].strip()
    outcomes = tuple(run_test(s, results_dir) for s in specs)
    return StudyClaim(
        study=path.parent.name,
        **{k: data[k].strip() for k in ONE_LINE_FIELDS},
        tests=specs,
        outcomes=outcomes,
        regime=str(data.get("regime", "")).strip(),
        registration=registration(path, results_dir, sorted({s.table for s in specs})),
    )


def claim_rows(experiments_dir: Path, root: Path | None = None) -> list[tuple[Claim, list[StudyClaim]]]:
    """Every claim with the studies that test it (sorted by study name); an empty list = no study yet."""
    experiments_dir = Path(experiments_dir)
    claims = load_claims(experiments_dir)
    ids = {c.id for c in claims}
    by_claim: dict[str, list[StudyClaim]] = {c.id: [] for c in claims}
    for path in sorted(experiments_dir.glob("*/claim.yaml")):
        sc = load_study_claim(path, ids, root if root is not None else experiments_dir.resolve().parent)
        by_claim[sc.claim].append(sc)
    return [(c, by_claim[c.id]) for c in claims]


def verdict_text(sc: StudyClaim) -> str:
    """A study's computed verdict and every test's line, as `bnlab report` prints it and READMEs show it."""
    lines = [f"{sc.study} ({sc.claim}): {sc.verdict_line()}"]
    if sc.registration is not None:
        lines.append(f"  {sc.registration.line()}")
    lines += [f"  {r.line()}" for r in sc.outcomes]
    return "\n".join(lines)


README_START = "<!-- verdict: computed by `bnlab report` from claim.yaml's tests; do not edit by hand -->"
README_END = "<!-- /verdict -->"


def readme_block(sc: StudyClaim) -> str:
    """The computed verdict as a README section (a fenced block: the numbers as `bnlab report` prints them)."""
    head = f"**Computed verdict (rule {RULE_VERSION}): {sc.verdict_line()}**"
    return f"{README_START}\n{head}\n\n```\n{verdict_text(sc)}\n```\n{README_END}"


def update_readme(sc: StudyClaim, readme: Path) -> bool:
    """Replace the README's verdict block with the computed one (appended when absent); True when it changed."""
    readme = Path(readme)
    if not readme.is_file():
        return False
    text = readme.read_text()
    block = readme_block(sc)
    if README_START in text and README_END in text:
        head, rest = text.split(README_START, 1)
        new = head + block + rest.split(README_END, 1)[1]
    else:
        new = text.rstrip("\n") + "\n\n## Computed verdict\n\n" + block + "\n"
    if new == text:
        return False
    readme.write_text(new)
    return True


RULES_START = "<!-- rules: computed by `bnlab report`: every study's verdict under each rule; do not edit by hand -->"
RULES_END = "<!-- /rules -->"


def rules_table(rows: list[tuple[Claim, list[StudyClaim]]]) -> str:
    """Every study's verdict under each rule on the committed results, and whether its tests preceded its runs:
    what a rule change moves, in one table (experiments/README.md)."""
    head = ["study", "claim", "rule 1", f"rule {RULE_VERSION} (the tests)", "declared / run at", "verdict now"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for claim, studies in rows:
        for sc in studies:
            reg = sc.registration
            order = "not checked" if reg is None or reg.note and not reg.post_hoc else _order(reg)
            tested = verdict_phrase(list(sc.outcomes), sc.regime)
            cells = [sc.study, claim.id, verdict(list(sc.outcomes), 1), tested, order, sc.verdict]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _order(reg: Registration) -> str:
    runs = ", ".join(c[:7] + ("*" if c in reg.missing else "") for c in reg.run_commits) or "none recorded"
    declared = reg.declared_at if reg.declared_at in (None, "working tree") else reg.declared_at[:7]
    return f"{declared} / {runs}" + (" (post hoc)" if reg.post_hoc else "")


def update_rules_block(rows: list[tuple[Claim, list[StudyClaim]]], readme: Path) -> bool:
    """Replace the rules block of experiments/README.md (True when it changed; False without markers)."""
    readme = Path(readme)
    text = readme.read_text() if readme.is_file() else ""
    if RULES_START not in text or RULES_END not in text:
        return False
    head, rest = text.split(RULES_START, 1)
    new = head + f"{RULES_START}\n{rules_table(rows)}\n{RULES_END}" + rest.split(RULES_END, 1)[1]
    if new == text:
        return False
    readme.write_text(new)
    return True
