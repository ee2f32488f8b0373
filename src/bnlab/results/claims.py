"""The claims C1-C8 and each study's verdict on one, read from small YAML files (the report's first table).

`experiments/claims.yaml` lists the claims (id -> one-line claim and its source). Each study that tests one
writes `experiments/<study>/claim.yaml`: the claim id, the source's result and ours in one line each, a verdict
and the committed results file that supports "ours". A claim no study names is reported as "no study yet".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

VERDICTS = ("reproduced", "partly", "not reproduced", "not run")
NO_STUDY = "no study yet"
CLAIM_FIELDS = ("claim", "source", "ours", "verdict", "evidence")


class ClaimFileError(ValueError):
    """A claim file with a missing or bad field: names the file and the field."""

    def __init__(self, path: Path, field: str, problem: str):
        self.path, self.field, self.problem = path, field, problem
        super().__init__(f"{path}: field '{field}': {problem}")

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
    ours: str  # our result, one line
    verdict: str  # one of VERDICTS
    evidence: str  # path of the supporting results file, relative to the repository root ("" when not run)


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


def load_study_claim(path: Path, claim_ids: set[str]) -> StudyClaim:
    """One study's claim.yaml, checked: every field present and one line, a known claim id and verdict."""
    data = _load_mapping(path)
    not_run = data.get("verdict") == "not run"
    for field in CLAIM_FIELDS:
        value = data.get(field)
        if field == "evidence" and not_run and value in (None, ""):
            data[field] = ""  # a study not run yet has no results file
            continue
        if not isinstance(value, str) or not value.strip():
            raise ClaimFileError(path, field, "missing or empty (a one-line string)")
        if "\n" in value.strip():
            raise ClaimFileError(path, field, "must be one line")
    unknown = set(data) - set(CLAIM_FIELDS)
    if unknown:
        raise ClaimFileError(path, sorted(unknown)[0], f"unknown field (allowed: {', '.join(CLAIM_FIELDS)})")
    if data["claim"] not in claim_ids:
        raise ClaimFileError(path, "claim", f"{data['claim']!r} is not in claims.yaml ({', '.join(sorted(claim_ids))})")
    if data["verdict"] not in VERDICTS:
        raise ClaimFileError(path, "verdict", f"{data['verdict']!r} is not one of {', '.join(VERDICTS)}")
    fields = {k: data[k].strip() for k in CLAIM_FIELDS}
    return StudyClaim(study=path.parent.name, **fields)


def claim_rows(experiments_dir: Path) -> list[tuple[Claim, list[StudyClaim]]]:
    """Every claim with the studies that test it (sorted by study name); an empty list = no study yet."""
    experiments_dir = Path(experiments_dir)
    claims = load_claims(experiments_dir)
    ids = {c.id for c in claims}
    by_claim: dict[str, list[StudyClaim]] = {c.id: [] for c in claims}
    for path in sorted(experiments_dir.glob("*/claim.yaml")):
        sc = load_study_claim(path, ids)
        by_claim[sc.claim].append(sc)
    return [(c, by_claim[c.id]) for c in claims]
