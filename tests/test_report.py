"""`bnlab report`: opens with one row per claim and study (declared tests, computed verdict), wide tables scroll,
n = 1 has no ±."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pandas as pd
import pytest

from bnlab import REPO_ROOT
from bnlab.results.claim_tests import RULE_VERSION, VERDICTS
from bnlab.results.claims import claim_rows, load_claims
from bnlab.results.report import NO_VERDICT, build_report
from bnlab.results.tables import aggregate, mean_std_cells, mean_std_text

EXPERIMENTS = REPO_ROOT / "experiments"


def test_committed_claim_files_are_valid_and_point_at_committed_results():
    rows = claim_rows(EXPERIMENTS)
    assert [c.id for c, _ in rows] == [c.id for c in load_claims(EXPERIMENTS)]  # every claim of claims.yaml, in order
    studies = [sc for _, scs in rows for sc in scs]
    declared = {p.parent.name for p in EXPERIMENTS.glob("*/claim.yaml")}  # every study's claim file is read
    assert {sc.study for sc in studies} == declared and declared
    for sc in studies:
        assert sc.verdict in VERDICTS and sc.tests
        assert (REPO_ROOT / sc.results).is_dir(), f"{sc.study}: results folder {sc.results} is not committed"
        for r in sc.outcomes:  # every declared test finds its table, arms and metric in the committed results
            assert r.outcome != "not run", f"{sc.study}: {r.line()}"
            assert r.spec.min_effect_origin, f"{sc.study} {r.spec.id}: min_effect_origin (the source's number, or why)"


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
            assert f">{sc.verdict}<" in row and "README.md" in row
            assert html.escape(sc.registration.line()) in row  # declared-at and run-at commits, from git
            for t in sc.tests:
                assert html.escape(t.what) in row  # every declared test is listed with its outcome
            if (REPO_ROOT / "results" / sc.study).is_dir():  # a study with results links to its section
                assert f'href="#study-{sc.study}"' in row and f'id="study-{sc.study}"' in page
    first, studies = next((c, scs) for c, scs in claim_rows(EXPERIMENTS) if scs)  # the claims file's first tested
    assert f'id="claim-{first.id}-{studies[0].study}"' in claims and "Verdicts are computed" in page
    assert f"rule {RULE_VERSION}" in page  # the rule version the verdicts follow


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


GOOD = (
    'claim: C2\nsource: "s"\nours: "o"\nresults: results/toy\ntests:\n'
    "  - {id: T1, what: w, table: t.csv, metric: a, a: {where: {}}, b: {value: 0}, direction: greater}\n"
)


def test_claim_files_are_read_and_claims_without_study_listed(tmp_path):
    exp = _study(tmp_path, GOOD)
    rows = claim_rows(exp)
    assert [(c.id, [s.study for s in scs]) for c, scs in rows] == [("C1", []), ("C2", ["toy"])]
    assert rows[1][1][0].verdict == "exploratory"  # t.csv holds one value: a one-seed row carries no verdict
    page = build_report(tmp_path / "results", tmp_path / "results" / "report.html", exp).read_text()
    assert re.search(r'<tr id="claim-C1">.*no study yet.*?</tr>', page)
    assert 'href="../experiments/toy/README.md"' in page and 'href="../experiments/toy/claim.yaml"' in page


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (GOOD.replace("C2", "C9"), "claim"),
        (GOOD.replace('ours: "o"\n', ""), "ours"),
        (GOOD + "extra: 1\n", "extra"),
        (GOOD + "verdict: reproduced\n", "verdict"),  # a typed verdict is refused: verdicts are computed
        (GOOD.replace("results: results/toy\n", ""), "results"),
        (GOOD.replace("direction: greater", "direction: up"), "direction"),
    ],
)
def test_bad_claim_file_names_the_file_and_field(tmp_path, text, field):
    with pytest.raises(ValueError, match=rf"toy/claim.yaml.*field '{field}'"):
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


def test_report_cells_keep_the_tables_text():
    from bnlab.results.report import _cell_text

    assert _cell_text("90.0") == "90.0" and _cell_text("0.925") == "0.925"  # not re-parsed into 90 / 9.25e-01
    assert _cell_text("0.039491234567") == "0.03949" and _cell_text("ResNet-50 / ImageNet") == "ResNet-50 / ImageNet"


def test_exploratory_studies_are_labelled_above_their_tables(tmp_path):
    page = build_report(REPO_ROOT / "results", tmp_path / "report.html", EXPERIMENTS).read_text()
    for _, studies in claim_rows(EXPERIMENTS):
        for sc in studies:
            if f'id="study-{sc.study}"' not in page:
                continue
            section = page.split(f'id="study-{sc.study}"', 1)[1].split("<h2", 1)[0]
            assert ("carry no verdict" in section) == (sc.verdict in NO_VERDICT), sc.study
            if sc.verdict == "post hoc":
                assert "changed after the commit its runs record" in section


def test_figures_say_n_and_what_the_bands_are():
    from bnlab.results.figures import SPREAD, errorbar_lines, mean_curves, mean_of, new_figure, say_bands

    assert (
        mean_of([5, 5]) == "mean of 5 seeds" and mean_of([4, 5]) == "mean of 4-5 seeds" and mean_of([1]) == "one seed"
    )
    agg = pd.DataFrame({"nbs": [2, 8], "err_mean": [0.2, 0.1], "err_std": [0.01, 0.02], "n": [5, 5]})
    epochs = pd.DataFrame({"run_id": ["a", "a", "b", "b"], "epoch": [1, 2, 1, 2], "err": [0.3, 0.2, 0.31, 0.21]})
    fig, axes = new_figure(ncols=2)
    errorbar_lines(axes[0][0], agg, "nbs", "err", label_fmt="val error")
    mean_curves(axes[0][1], epochs.assign(arm="BN"), "epoch", "err", "arm")
    say_bands(fig, "bars and bands")
    labels = [h.get_label() for ax in axes[0] for h in ax.get_legend_handles_labels()[0]]
    assert labels == ["val error (n = 5)", "BN (n = 2)"]
    assert any(SPREAD in t.get_text() for t in fig.texts)
