"""Plot helpers with one consistent style; error bars / bands are +- one std over seeds."""

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
    """One line per `hue` value: mean of `metric` vs `x` with +-std error bars (columns from tables.aggregate)."""
    groups = agg.groupby(hue, dropna=False, sort=True) if hue else [(None, agg)]
    for key, g in groups:
        g = g.sort_values(x)
        ax.errorbar(
            g[x],
            g[f"{metric}_mean"] * scale,
            yerr=g[f"{metric}_std"] * scale,
            marker="o",
            capsize=3,
            label=label_fmt.format(key) if hue else label_fmt.format(metric),
            **kw,
        )


def mean_curves(
    ax, epochs: pd.DataFrame, x: str, metric: str, hue: str, scale: float = 100.0, label_fmt: str = "{}", **kw
) -> None:
    """Per-`hue` mean curve of `metric` over `x` (epoch or step) with a +-std band over seeds."""
    for key, g in epochs.groupby(hue, dropna=False, sort=True):
        stats = g.groupby(x)[metric].agg(["mean", "std"]).fillna(0.0)
        line = ax.plot(stats.index, stats["mean"] * scale, label=label_fmt.format(key), **kw)[0]
        ax.fill_between(
            stats.index,
            (stats["mean"] - stats["std"]) * scale,
            (stats["mean"] + stats["std"]) * scale,
            color=line.get_color(),
            alpha=0.15,
            linewidth=0,
        )
