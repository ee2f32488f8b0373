"""One self-contained HTML page: the claims table first (one row per claim and study, with the declared tests and
the verdict computed from the committed results, bnlab.results.claims), then every study's tables (from their
CSVs) and figures (PNG embedded inline)."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

import pandas as pd

from bnlab.results.claim_tests import RULE_VERSION
from bnlab.results.claims import NO_STUDY, claim_rows
from bnlab.utils.io import atomic_write_text

SKIP_TABLES = {"runs", "epochs"}  # raw collections; the study's own tables are the summaries
# wide tables scroll inside their own box (.wide) instead of pushing the page past the window; the claims table fits
# the page (long paths and names wrap) so its study column is never cut off
CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;
vertical-align:top}th{background:#f3f3f3;text-align:left}.wide{overflow-x:auto;max-width:100%;margin:0 0 1.5em}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}h2{border-bottom:1px solid #ddd}
.claims{width:100%}.claims td{min-width:6em;overflow-wrap:anywhere}.claims td:last-child{min-width:10em}
.claims td.text{min-width:12em}.claims td.tests{min-width:26em}
.v-reproduced{background:#e3f4e1}.v-partly{background:#fdf3d7}.v-not-reproduced{background:#f6ece4}
.v-inconclusive,.v-exploratory,.v-post-hoc{background:#eef2f8}.v-contradicted{background:#f9e0de}
.v-not-run,.v-no-study-yet{background:#eee;color:#555}ul.tests{margin:0;padding-left:1.2em}
.o-supported{color:#1d6b1d}.o-contradicted{color:#a11}.o-not-reproduced{color:#8a4b14}
.o-too-few-seeds,.o-not-run{color:#666}"""
NO_VERDICT = ("exploratory", "not run", "post hoc")  # verdicts under which a study's tables carry none


def _anchor(study: str) -> str:
    return f"study-{study}"


def _href(target: Path, page_dir: Path) -> str:
    """A link from the page to a repository file, relative so it works in any checkout."""
    return html.escape(Path(os.path.relpath(target, page_dir)).as_posix())


def _wide(table_html: str) -> str:
    return f'<div class="wide">{table_html}</div>'


def _study(folder: Path, results_root: Path) -> str:
    """results/<study>/<preset>/ -> <study>."""
    return folder.relative_to(results_root).parts[0] if folder != results_root else ""


def _tests_cell(sc) -> str:
    """One line per declared test: what it checks, the estimate with its CI and p, and the outcome."""
    items = []
    for r in sc.outcomes:
        css = "o-" + r.outcome.replace(" ", "-")
        detail = "; ".join(x for x in (r.numbers(), r.note) if x)
        items.append(
            f'<li><b>{html.escape(r.spec.id)}</b> {html.escape(r.spec.what)}<br><span class="{css}">'
            f"<b>{html.escape(r.outcome)}</b></span> <small>{html.escape(detail)}</small></li>"
        )
    return f'<ul class="tests">{"".join(items)}</ul>'


def _detail(sc) -> str:
    """Below the verdict word: its sub-claims, then when the tests were declared and when the runs ran."""
    line = sc.verdict_line()
    detail = line.split(": ", 1)[1] if line.startswith(sc.verdict + ": ") else line.removeprefix(sc.verdict).strip()
    reg = sc.registration.line() if sc.registration is not None else ""
    return " | ".join(x for x in (detail, reg) if x)


def claims_table(claims: list, experiments_dir: Path, page_dir: Path, studies_shown: set[str]) -> str:
    """The report's opening table from `claim_rows`: per claim, each study's source result, our setting, the
    declared tests with their computed outcomes, the computed verdict, and links."""
    root = Path(experiments_dir).resolve().parent  # results folders are relative to the repository root
    head = ["claim", "source result", "our setting", "declared tests (a - b, 95% CI, p)", "verdict", "study"]
    rows = []
    for claim, studies in claims:
        cid = html.escape(claim.id)
        label = f"<b>{cid}</b> {html.escape(claim.text)}<br><small>{html.escape(claim.source)}</small>"
        if not studies:
            rows.append(
                f'<tr id="claim-{cid}"><td class="text">{label}</td><td></td><td></td><td></td>'
                f'<td class="v-no-study-yet">{NO_STUDY}</td><td></td></tr>'
            )
            continue
        for i, sc in enumerate(studies):
            links = [
                f'<a href="{_href(root / "experiments" / sc.study / "README.md", page_dir)}">README</a>',
                f'<a href="{_href(root / "experiments" / sc.study / "claim.yaml", page_dir)}">claim.yaml</a>',
            ]
            if sc.study in studies_shown:
                links.insert(0, f'<a href="#{_anchor(sc.study)}">results</a>')
            first = f'<td class="text" rowspan="{len(studies)}">{label}</td>' if i == 0 else ""
            verdict_class = "v-" + sc.verdict.replace(" ", "-")
            rows.append(
                f'<tr id="claim-{cid}-{html.escape(sc.study)}">{first}<td class="text">{html.escape(sc.source)}</td>'
                f'<td class="text">{html.escape(sc.ours)}</td><td class="tests">{_tests_cell(sc)}</td>'
                f'<td class="{verdict_class}"><b>{sc.verdict}</b><br><small>{html.escape(_detail(sc))}</small></td>'
                f"<td><b>{html.escape(sc.study)}</b><br>{'<br>'.join(links)}</td></tr>"
            )
    header = "".join(f"<th>{h}</th>" for h in head)
    rule = (
        f"<p><small>Verdicts are computed (bnlab.results.claim_tests, rule {RULE_VERSION}): reproduced = every "
        "declared test supported; partly = some, with each sub-claim's word; contradicted = a test significant "
        "against the claim and none supported; not reproduced = every test's CI rules out the smallest effect "
        "declared to matter, in the regime named (not evidence about other regimes); inconclusive = the rest; "
        "exploratory = an arm has fewer than 5 seeds (no verdict); not run = a test has no committed data; "
        "post hoc = the tests' decisive fields changed after the commit the runs record (checked from git; "
        "exploratory until rerun). CIs are 95% from the t distribution over seeds.</small></p>"
    )
    table = f'<table class="claims"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    return rule + _wide(table)


def _cell_text(text):
    """A table cell as written, except long raw floats (e.g. 0.0394912345), shown with 4 significant digits."""
    if not isinstance(text, str) or len(text) <= 8:
        return text
    try:
        return f"{float(text):.4g}"
    except ValueError:
        return text


def _section(folder: Path, title: str, anchor: str | None, verdict: str | None = None) -> str:
    id_attr = f' id="{anchor}"' if anchor else ""
    parts = [f"<h2{id_attr}>{html.escape(title)}</h2>"]
    if verdict in NO_VERDICT:  # the study's tables carry no verdict: say so above them
        why = (
            "its tests' decisive fields changed after the commit its runs record (or that commit is not in history)"
            if verdict == "post hoc"
            else "a declared test of this study has fewer than 5 seeds per arm or no committed data"
        )
        parts.append(
            f'<p class="v-{verdict.replace(" ", "-")}"><b>{verdict}:</b> {why}; its tables and figures are '
            "exploratory and carry no verdict.</p>"
        )
    for csv in sorted(folder.glob("*.csv")):
        if csv.stem in SKIP_TABLES or not csv.with_suffix(".md").exists():
            continue
        caption = csv.with_suffix(".md").read_text().split("\n|", 1)[0].strip()
        parts.append(f"<h3>{html.escape(csv.stem)}</h3>")
        if caption and not caption.startswith("|"):
            parts.append(f"<p>{html.escape(caption)}</p>")
        table = pd.read_csv(csv, dtype=str).map(_cell_text)  # text as the study wrote it: "90.0" stays "90.0"
        parts.append(_wide(table.to_html(index=False, na_rep="", border=0)))
    for png in sorted(folder.glob("*.png")):
        data = base64.b64encode(png.read_bytes()).decode()
        parts.append(
            f'<h3>{html.escape(png.stem)}</h3><img alt="{html.escape(png.stem)}" src="data:image/png;base64,{data}">'
        )
    return "\n".join(parts)


def build_report(results_root: Path, output: Path, experiments_dir: Path | None = None) -> Path:
    """results/report.html: the claims table (when `experiments_dir` holds claims.yaml), then one section per
    results folder; each study's first section is the target of the claims table's "results" link."""
    results_root, output = Path(results_root), Path(output)
    rows = []
    if experiments_dir is not None and (Path(experiments_dir) / "claims.yaml").exists():
        rows = claim_rows(Path(experiments_dir))
    order = list(dict.fromkeys(sc.study for _, studies in rows for sc in studies))  # sections in claim order
    folders = sorted(
        {p.parent for p in results_root.rglob("*.png")}
        | {p.parent for p in results_root.rglob("*.md") if p.name != "README.md"},
        key=lambda f: (order.index(_study(f, results_root)) if _study(f, results_root) in order else len(order), f),
    )
    verdicts = {sc.study: sc.verdict for _, studies in rows for sc in studies}
    sections, anchored = [], set()
    for f in folders:
        study = _study(f, results_root)
        anchor = None if study in anchored else _anchor(study)
        anchored.add(study)
        verdict = verdicts.get(study) if anchor else None
        sections.append(_section(f, f.relative_to(results_root).as_posix(), anchor, verdict))
    claims = ""
    if rows:
        claims = "<h2>Claims</h2>" + claims_table(rows, Path(experiments_dir), output.parent.resolve(), anchored)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>bnlab results</title><style>{CSS}</style>"
        f"</head><body><h1>bnlab results</h1>{claims}{''.join(sections) or '<p>No results yet.</p>'}</body></html>"
    )
    return atomic_write_text(output, page)
