"""Aggregate over seeds (mean +- std, n) and write Markdown / LaTeX tables without extra dependencies."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bnlab.utils.io import atomic_write_text

# config sections whose keys make what a run computes (health.* only watches; logger.* and these train.* keys
# say where and how a run is watched: bnlab.train.run_dir.NON_IDENTITY_KEYS)
RUN_SECTIONS = ("data", "sampler", "model", "norm", "optim", "schedule", "loss", "domains", "train", "eval", "finetune")
TOP_LEVEL_KEYS = ("study", "arm", "preset")
NOT_COMPUTED = ("train.progress", "train.resume", "train.retry_failed")


def _run_keys(df: pd.DataFrame) -> list[str]:
    """The columns of `df` that are config keys of what a run computes (seed aside: seeds are what a row averages)."""
    return [
        c
        for c in df.columns
        if (c in TOP_LEVEL_KEYS or c.split(".")[0] in RUN_SECTIONS and "." in c) and c not in NOT_COMPUTED
    ]


def pooled_keys(df: pd.DataFrame, by: list[str]) -> list[str]:
    """Config keys whose value differs between runs of one `by` group: averaging that group would pool runs that
    are not seeds of one configuration. A key missing from older runs counts as its neutral default
    (bnlab.train.run_dir.NEUTRAL_DEFAULTS: such runs computed exactly that)."""
    from bnlab.results.grid import LEGACY_DEFAULTS
    from bnlab.train.run_dir import NEUTRAL_DEFAULTS

    if df.empty:
        return []
    defaults = {**_flat(NEUTRAL_DEFAULTS), **LEGACY_DEFAULTS}
    keys = [c for c in _run_keys(df) if c not in by]
    values = pd.DataFrame({c: df[c].map(lambda v, c=c: _canon(v, defaults.get(c))) for c in keys}, index=df.index)
    if values.empty:
        return []
    spread = values.groupby([df[b].astype(str) for b in by], dropna=False).nunique()
    return [c for c in keys if (spread[c] > 1).any()]


def _canon(value, default) -> str:
    """A cell as text, missing as `default`, 1.0 as 1 (a column with gaps holds its integers as floats)."""
    if value is None or (isinstance(value, float) and value != value):
        value = default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def aggregate(df: pd.DataFrame, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """One row per arm (`by`): `<metric>_mean`, `<metric>_std` (0 for a single seed) and `n` runs. Runs are never
    pooled: a config key that differs inside an arm (runs swept with another optim.lr, say) becomes a column of
    the table too, so each row holds the seeds of one configuration."""
    present = [m for m in metrics if m in df]
    by = list(by) + pooled_keys(df, list(by))
    grouped = df.groupby(by, dropna=False, sort=True)
    out = grouped[present].agg(["mean", "std"])
    out.columns = [f"{m}_{stat}" for m, stat in out.columns]
    out = out.fillna({c: 0.0 for c in out.columns if c.endswith("_std")})
    out["n"] = grouped.size()
    return out.reset_index()


def mean_std_text(mean: float, std: float, n: int, digits: int = 1) -> str:
    """'mean ± std' over n runs; just the mean when n = 1 (one run has no spread to report), '–' if not measured."""
    if mean != mean:  # NaN
        return "–"
    text = f"{mean:.{digits}f}"
    if text.lstrip("-").strip("0.") == "":
        text = text.lstrip("-")  # -0.0 reads as a sign that is not there
    return text if n <= 1 or std != std else f"{text} ± {std:.{digits}f}"


def mean_std_cells(agg: pd.DataFrame, metrics: list[str], scale: float = 100.0, digits: int = 1) -> pd.DataFrame:
    """Replace <m>_mean/<m>_std column pairs by one 'mean ± std' text column (errors in percent by default); cells
    of a single run (n = 1, from `aggregate`) show the mean alone."""
    out = agg.drop(columns=[c for c in agg if c.endswith(("_mean", "_std"))])
    counts = agg["n"] if "n" in agg else [2] * len(agg)  # without counts, every row is taken as several runs
    for m in metrics:
        if f"{m}_mean" in agg:
            out[m] = [
                mean_std_text(mu * scale, sd * scale, n, digits)
                for mu, sd, n in zip(agg[f"{m}_mean"], agg[f"{m}_std"], counts)
            ]
    return out


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def to_markdown(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def to_latex(df: pd.DataFrame, caption: str = "") -> str:
    esc = lambda s: str(s).replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$").replace("#", r"\#")
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{" + "l" * len(df.columns) + "}",
        r"\toprule",
        " & ".join(esc(c) for c in df.columns) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(esc(_cell(v)) for v in row) + r" \\" for row in df.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(r"\caption{" + esc(caption) + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, out_dir: str | Path, name: str, caption: str = "") -> list[Path]:
    """<name>.csv, <name>.md and <name>.tex side by side."""
    out = Path(out_dir)
    md = (f"{caption}\n\n" if caption else "") + to_markdown(df)
    return [
        atomic_write_text(out / f"{name}.csv", df.to_csv(index=False)),
        atomic_write_text(out / f"{name}.md", md),
        atomic_write_text(out / f"{name}.tex", to_latex(df, caption)),
    ]
