"""One self-contained HTML page: the claims table first (one row per claim C1-C8, from the studies' claim.yaml
files), then every study's tables (from their CSVs) and figures (PNG embedded inline)."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

import pandas as pd

from bnlab.results.claims import NO_STUDY, claim_rows
from bnlab.utils.io import atomic_write_text

SKIP_TABLES = {"runs", "epochs"}  # raw collections; the study's own tables are the summaries
# wide tables scroll inside their own box (.wide) instead of pushing the page past the window
CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;
vertical-align:top}th{background:#f3f3f3;text-align:left}.wide{overflow-x:auto;max-width:100%;margin:0 0 1.5em}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}h2{border-bottom:1px solid #ddd}
.claims td{min-width:6em}.claims td.text{min-width:16em}
.v-reproduced{background:#e3f4e1}.v-partly{background:#fdf3d7}.v-not-reproduced{background:#f9e0de}
.v-not-run,.v-no-study-yet{background:#eee;color:#555}"""


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


def claims_table(claims: list, experiments_dir: Path, page_dir: Path, studies_shown: set[str]) -> str:
    """The report's opening table from `claim_rows`: per claim, each study's source result, ours, verdict, links."""
    root = Path(experiments_dir).resolve().parent  # claim.yaml paths are relative to the repository root
    head = ["claim", "source result", "ours", "verdict", "study: section, README, evidence"]
    rows = []
    for claim, studies in claims:
        cid = html.escape(claim.id)
        label = f"<b>{cid}</b> {html.escape(claim.text)}<br><small>{html.escape(claim.source)}</small>"
        if not studies:
            rows.append(
                f'<tr id="claim-{cid}"><td class="text">{label}</td><td></td><td></td>'
                f'<td class="v-no-study-yet">{NO_STUDY}</td><td></td></tr>'
            )
            continue
        for i, sc in enumerate(studies):
            links = [f'<a href="{_href(root / "experiments" / sc.study / "README.md", page_dir)}">README</a>']
            if sc.study in studies_shown:
                links.insert(0, f'<a href="#{_anchor(sc.study)}">results</a>')
            evidence = Path(sc.evidence)
            if (root / evidence).exists():
                href = _href(root / evidence, page_dir)
                links.append(f'<a href="{href}" title="{html.escape(sc.evidence)}">{html.escape(evidence.name)}</a>')
            else:
                links.append(f"{html.escape(sc.evidence)} <b>(missing)</b>")
            first = f'<td class="text" rowspan="{len(studies)}">{label}</td>' if i == 0 else ""
            verdict_class = "v-" + sc.verdict.replace(" ", "-")
            rows.append(
                f'<tr id="claim-{cid}-{html.escape(sc.study)}">{first}<td class="text">{html.escape(sc.source)}</td>'
                f'<td class="text">{html.escape(sc.ours)}</td><td class="{verdict_class}">{sc.verdict}</td>'
                f"<td><b>{html.escape(sc.study)}</b><br>{'<br>'.join(links)}</td></tr>"
            )
    header = "".join(f"<th>{h}</th>" for h in head)
    return _wide(f'<table class="claims"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _section(folder: Path, title: str, anchor: str | None) -> str:
    id_attr = f' id="{anchor}"' if anchor else ""
    parts = [f"<h2{id_attr}>{html.escape(title)}</h2>"]
    for csv in sorted(folder.glob("*.csv")):
        if csv.stem in SKIP_TABLES or not csv.with_suffix(".md").exists():
            continue
        caption = csv.with_suffix(".md").read_text().split("\n|", 1)[0].strip()
        parts.append(f"<h3>{html.escape(csv.stem)}</h3>")
        if caption and not caption.startswith("|"):
            parts.append(f"<p>{html.escape(caption)}</p>")
        parts.append(_wide(pd.read_csv(csv).to_html(index=False, na_rep="", border=0)))
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
    sections, anchored = [], set()
    for f in folders:
        study = _study(f, results_root)
        anchor = None if study in anchored else _anchor(study)
        anchored.add(study)
        sections.append(_section(f, f.relative_to(results_root).as_posix(), anchor))
    claims = ""
    if rows:
        claims = "<h2>Claims</h2>" + claims_table(rows, Path(experiments_dir), output.parent.resolve(), anchored)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>bnlab results</title><style>{CSS}</style>"
        f"</head><body><h1>bnlab results</h1>{claims}{''.join(sections) or '<p>No results yet.</p>'}</body></html>"
    )
    return atomic_write_text(output, page)
