"""Plot helpers with one consistent style; error bars / bands are +- one std over seeds, and every figure says so:
legends carry each line's n (seeds), titles say "mean of n seeds" (`mean_of`) and `say_bands` writes what the bars
or bands are under the figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

STYLE = {
    "figure.figsize": (5.0, 3.4),
    "figure.dpi": 120,
    "savefig.dpi": 160,
    "savefig.bbox": "tight",
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "font.size": 9,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "lines.linewidth": 1.6,
    "lines.markersize": 4,
}


SPREAD = "± 1 std over seeds"  # what every error bar and band of these helpers shows


def mean_of(counts) -> str:
    """'mean of 5 seeds' (or 'mean of 4-5 seeds' when lines differ; 'one seed' for 1): for a title."""
    counts = sorted({int(n) for n in counts})
    if not counts:
        return "no runs"
    if counts == [1]:
        return "one seed"
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"mean of {n} seeds"


def say_bands(fig, what: str = "bands", n_in: str = "each legend entry") -> None:
    """A line under the figure: what its bars or bands are and where n is written (a reader of the PNG alone must
    not have to guess); `n_in` names where the figure states its number of seeds."""
    fig.text(0.5, -0.02, f"{what}: {SPREAD}; n in {n_in} = seeds", ha="center", va="top", fontsize=7)


def _with_n(label: str, n) -> str:
    return label if "n=" in label.replace(" ", "") else f"{label} (n = {n})"


def new_figure(ncols: int = 1, nrows: int = 1, width: float | None = None, height: float | None = None):
    plt.rcParams.update(STYLE)
    w, h = STYLE["figure.figsize"]
    return plt.subplots(nrows, ncols, figsize=(width or w * ncols, height or h * nrows), squeeze=False)


def save_figure(fig, out_dir: str | Path, name: str) -> list[Path]:
    """PNG and PDF of the same figure (written to temp names, then renamed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        tmp = out / f".{name}.tmp.{ext}"
        fig.savefig(tmp, format=ext, metadata={"CreationDate": None} if ext == "pdf" else None)  # reproducible bytes
        tmp.replace(out / f"{name}.{ext}")
        paths.append(out / f"{name}.{ext}")
    plt.close(fig)
    return paths


def errorbar_lines(
    ax,
    agg: pd.DataFrame,
    x: str,
    metric: str,
    hue: str | None = None,
    label_fmt: str = "{}",
    scale: float = 100.0,
    **kw,
) -> None:
    """One line per `hue` value: mean of `metric` vs `x` with +-std error bars (columns from tables.aggregate); the
    label ends with the line's n (seeds per point, a range when points differ)."""
    groups = agg.groupby(hue, dropna=False, sort=True) if hue else [(None, agg)]
    for key, g in groups:
        g = g.sort_values(x)
        label = label_fmt.format(key) if hue else label_fmt.format(metric)
        if "n" in g:
            ns = sorted({int(n) for n in g["n"]})
            label = _with_n(label, ns[0] if len(ns) == 1 else f"{ns[0]}-{ns[-1]}")
        ax.errorbar(
            g[x], g[f"{metric}_mean"] * scale, yerr=g[f"{metric}_std"] * scale, marker="o", capsize=3, label=label, **kw
        )


def mean_curves(
    ax, epochs: pd.DataFrame, x: str, metric: str, hue: str, scale: float = 100.0, label_fmt: str = "{}", **kw
) -> None:
    """Per-`hue` mean curve of `metric` over `x` (epoch or step) with a +-std band over seeds; the label ends with the
    curve's n (runs, by run_id)."""
    for key, g in epochs.groupby(hue, dropna=False, sort=True):
        stats = g.groupby(x)[metric].agg(["mean", "std"]).fillna(0.0)
        n = g["run_id"].nunique() if "run_id" in g else g.groupby(x).size().max()
        line = ax.plot(stats.index, stats["mean"] * scale, label=_with_n(label_fmt.format(key), n), **kw)[0]
        ax.fill_between(
            stats.index,
            (stats["mean"] - stats["std"]) * scale,
            (stats["mean"] + stats["std"]) * scale,
            color=line.get_color(),
            alpha=0.15,
            linewidth=0,
        )
