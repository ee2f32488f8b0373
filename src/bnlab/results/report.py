"""One self-contained HTML page: every study's tables (from their CSVs) and figures (PNG embedded inline)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from bnlab.utils.io import atomic_write_text

SKIP_TABLES = {"runs", "epochs"}  # raw collections; the study's own tables are the summaries
CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee;margin:.5em 0}h2{border-bottom:1px solid #ddd}"""


def _section(folder: Path, title: str) -> str:
    parts = [f"<h2>{html.escape(title)}</h2>"]
    for csv in sorted(folder.glob("*.csv")):
        if csv.stem in SKIP_TABLES or not csv.with_suffix(".md").exists():
            continue
        caption = csv.with_suffix(".md").read_text().split("\n|", 1)[0].strip()
        parts.append(f"<h3>{html.escape(csv.stem)}</h3>")
        if caption and not caption.startswith("|"):
            parts.append(f"<p>{html.escape(caption)}</p>")
        parts.append(pd.read_csv(csv).to_html(index=False, na_rep="", border=0))
    for png in sorted(folder.glob("*.png")):
        data = base64.b64encode(png.read_bytes()).decode()
        parts.append(
            f'<h3>{html.escape(png.stem)}</h3><img alt="{html.escape(png.stem)}" src="data:image/png;base64,{data}">'
        )
    return "\n".join(parts)


def build_report(results_root: Path, output: Path) -> Path:
    folders = sorted(
        {p.parent for p in results_root.rglob("*.png")}
        | {p.parent for p in results_root.rglob("*.md") if p.name != "README.md"}
    )
    sections = [_section(f, str(f.relative_to(results_root))) for f in folders]
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>bnlab results</title><style>{CSS}</style>"
        f"</head><body><h1>bnlab results</h1>{''.join(sections) or '<p>No results yet.</p>'}</body></html>"
    )
    return atomic_write_text(output, page)
