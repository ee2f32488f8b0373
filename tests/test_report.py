"""`bnlab report`: opens with one row per claim (from the claim.yaml files), wide tables scroll, n = 1 has no ±."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from bnlab import REPO_ROOT
from bnlab.results.claims import VERDICTS, ClaimFileError, claim_rows
from bnlab.results.report import build_report
from bnlab.results.tables import aggregate, mean_std_cells, mean_std_text

EXPERIMENTS = REPO_ROOT / "experiments"


def test_committed_claim_files_are_valid_and_point_at_committed_results():
    rows = claim_rows(EXPERIMENTS)
    assert [c.id for c, _ in rows] == [f"C{i}" for i in range(1, 9)]
    studies = [sc for _, scs in rows for sc in scs]
    assert {sc.study for sc in studies} >= {"nbs", "renorm_small", "renorm_noniid", "forum_instability"}
    for sc in studies:
        assert sc.verdict in VERDICTS
        assert (REPO_ROOT / sc.evidence).is_file(), f"{sc.study}: evidence {sc.evidence} is not committed"


def test_report_opens_with_a_row_per_claim(tmp_path):
    page = build_report(REPO_ROOT / "results", tmp_path / "report.html", EXPERIMENTS).read_text()
    claims = page[page.index("<h2>Claims</h2>") : page.index("</table>")]
    assert page.index("<h2>Claims</h2>") < page.index("<h2 id=")  # the claims table comes first
    for cid, studies in claim_rows(EXPERIMENTS):
        assert f'id="claim-{cid.id}' in claims
        if not studies:
            row = re.search(rf'<tr id="claim-{cid.id}">.*?</tr>', claims).group(0)
            assert "no study yet" in row
        for sc in studies:
            row = re.search(rf'<tr id="claim-{cid.id}-{sc.study}">.*?</tr>', claims).group(0)
            assert sc.verdict in row and f'href="#study-{sc.study}"' in row and "README.md" in row
            assert f'id="study-{sc.study}"' in page  # the link's target section exists
    assert 'id="claim-C1-nbs"' in claims and ">partly<" in claims


def test_every_table_sits_in_a_scrolling_box(tmp_path):
    page = build_report(REPO_ROOT / "results", tmp_path / "report.html", EXPERIMENTS).read_text()
    assert page.count("<table") == page.count('<div class="wide"><table') > 1
    assert ".wide{overflow-x:auto" in page


def _study(tmp_path, claim_yaml: str) -> Path:
    exp = tmp_path / "experiments"
    (exp / "toy").mkdir(parents=True)
    (exp / "claims.yaml").write_text('C1:\n  claim: "a claim"\n  source: "a talk"\nC2:\n  claim: "b"\n  source: "c"\n')
    (exp / "toy" / "claim.yaml").write_text(claim_yaml)
    (tmp_path / "results" / "toy").mkdir(parents=True)
    (tmp_path / "results" / "toy" / "t.csv").write_text("a\n1\n")
    return exp


GOOD = 'claim: C2\nsource: "s"\nours: "o"\nverdict: not run\nevidence: results/toy/t.csv\n'


def test_claim_files_are_read_and_claims_without_study_listed(tmp_path):
    exp = _study(tmp_path, GOOD)
    rows = claim_rows(exp)
    assert [(c.id, [s.study for s in scs]) for c, scs in rows] == [("C1", []), ("C2", ["toy"])]
    page = build_report(tmp_path / "results", tmp_path / "results" / "report.html", exp).read_text()
    assert re.search(r'<tr id="claim-C1">.*no study yet.*?</tr>', page)
    assert 'href="toy/t.csv"' in page and 'href="../experiments/toy/README.md"' in page


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (GOOD.replace("not run", "maybe"), "verdict"),
        (GOOD.replace("C2", "C9"), "claim"),
        (GOOD.replace('ours: "o"\n', ""), "ours"),
        (GOOD + "extra: 1\n", "extra"),
    ],
)
def test_bad_claim_file_names_the_file_and_field(tmp_path, text, field):
    with pytest.raises(ClaimFileError, match=rf"toy/claim.yaml: field '{field}'"):
        claim_rows(_study(tmp_path, text))


def test_single_run_cells_show_the_mean_alone():
    runs = pd.DataFrame({"arm": ["a", "b", "b"], "err": [0.25, 0.1, 0.2]})
    cells = mean_std_cells(aggregate(runs, ["arm"], ["err"]), ["err"])
    assert list(cells["err"]) == ["25.0", "15.0 ± 7.1"] and list(cells["n"]) == [1, 2]
    assert mean_std_text(-0.0004, 0.0, 1, 1) == "0.0"  # no "-0.0"
    assert mean_std_text(float("nan"), 0.0, 1) == "–"


def test_committed_tables_print_no_spread_for_single_runs():
    tables = list((REPO_ROOT / "results").glob("*/cpu/*_table.csv"))
    assert tables
    for csv in tables:
        t = pd.read_csv(csv, dtype=str)
        if "n" in t:
            single = t[t["n"] == "1"]
            assert not single.apply(lambda col: col.str.contains("±", na=False)).any().any(), csv
