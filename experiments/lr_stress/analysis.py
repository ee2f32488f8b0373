"""C7 (first part) analysis: training accuracy and loss vs learning rate in an LR range test, with and without BN.

Each "epoch" row averages a few steps whose lr grows geometrically; it is placed at the geometric mean of their
learning rates. A run's stable range is where its epoch training accuracy stays within STABLE_FRACTION of the way
from chance to the run's own peak: the low end is the first such epoch (training has started to work), the high
end the last one before accuracy falls below it for good or the loss becomes NaN (the run is then `diverged`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bnlab.results.figures import new_figure, save_figure
from bnlab.results.runs import arm_order, completed
from bnlab.results.tables import write_table

ARM_ORDER = ["bn", "no_bn"]
LABELS = {"bn": "batch norm", "no_bn": "no batch norm"}
STABLE_FRACTION = 0.75  # accuracy >= chance + 0.75 (peak - chance) counts as "training stably"


def lr_per_epoch(run: pd.Series, epochs: np.ndarray) -> np.ndarray:
    """Geometric-mean lr of each epoch's steps, from the schedule in the run's config (lr_range: start -> end)."""
    bpe, n_epochs = int(run["train.batches_per_epoch"]), int(run["train.epochs"])
    start, end = float(run["schedule.start_lr"]), float(run["schedule.end_lr"])
    per_step = math.log(end / start) / max(1, bpe * n_epochs - 1)
    middle_step = (epochs - 1) * bpe + (bpe - 1) / 2
    return start * np.exp(per_step * middle_step)


def curves(runs: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    done = completed(runs, "diverged")
    out = []
    for _, run in done.iterrows():
        e = epochs[epochs["run_id"] == run["run_id"]].sort_values("epoch")
        out.append(
            pd.DataFrame(
                {
                    "run_id": run["run_id"],
                    "arm": run["arm"],
                    "seed": run["seed"],
                    "lr": lr_per_epoch(run, e["epoch"].to_numpy()),
                    "train_acc": 1 - e["train_err"].to_numpy(),
                    "train_loss": e["train_loss"].to_numpy(),
                    "diverged": run["status"] == "diverged",
                    # the loss became NaN during the epoch after the last recorded one
                    "nan_lr": lr_per_epoch(run, np.array([len(e) + 1]))[0] if run["status"] == "diverged" else np.nan,
                }
            )
        )
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def stable_range(c: pd.DataFrame, chance: float) -> dict:
    """Stable lr range of one run's curve (sorted by lr): see the module docstring."""
    acc, lr = c["train_acc"].to_numpy(), c["lr"].to_numpy()
    finite = np.isfinite(c["train_loss"].to_numpy())
    peak_i = int(np.nanargmax(acc))
    threshold = chance + STABLE_FRACTION * (acc[peak_i] - chance)
    ok = (acc >= threshold) & finite
    low_i = int(np.argmax(ok))
    high_i = peak_i
    while high_i + 1 < len(ok) and ok[high_i + 1]:
        high_i += 1
    return {
        "peak_acc": acc[peak_i],
        "lr_at_peak": lr[peak_i],
        "lr_low": lr[low_i],
        "lr_high": lr[high_i],
        "decades": math.log10(lr[high_i] / lr[low_i]),
        "diverged_at_lr": c["nan_lr"].iloc[0],
    }


def _fmt(values: pd.Series, fmt: str) -> str:
    v = values.dropna()
    if v.empty:
        return "–"
    if len(v) == 1:
        return format(v.iloc[0], fmt)
    return f"{format(v.mean(), fmt)} ± {format(v.std(ddof=1), fmt)}"


def _geo(values: pd.Series) -> str:
    """Geometric mean (x/÷ geometric std) of learning rates over seeds."""
    v = np.log10(values.dropna().to_numpy())
    if not len(v):
        return "–"
    return f"{10 ** v.mean():.3g}" + (f" (x/÷ {10 ** v.std(ddof=1):.2f})" if len(v) > 1 else "")


def _tables(per_run: pd.DataFrame, arms: list, out) -> list:
    """The stable-range table per arm (BN / no BN ratios in the caption) and the per-run table."""
    rows = []
    for arm in arms:
        p = per_run[per_run["arm"] == arm]
        rows.append(
            {
                "arm": arm,
                "seeds": len(p),
                "peak train acc (%)": _fmt(p["peak_acc"] * 100, ".1f"),
                "lr at peak": _geo(p["lr_at_peak"]),
                "stable lr from": _geo(p["lr_low"]),
                "stable lr to": _geo(p["lr_high"]),
                "stable range (decades)": _fmt(p["decades"], ".2f"),
                "runs diverged (NaN)": int(p["diverged_at_lr"].notna().sum()),
                "NaN at lr": _geo(p["diverged_at_lr"]),
            }
        )
    table = pd.DataFrame(rows)
    if {"bn", "no_bn"} <= set(arms):
        hi = per_run.groupby("arm")["lr_high"].apply(lambda v: np.exp(np.log(v).mean()))
        width = per_run.groupby("arm")["decades"].mean()
        table.attrs["ratio"] = (hi["bn"] / hi["no_bn"], 10 ** (width["bn"] - width["no_bn"]))
    caption = (
        f"LR range test (lr from the first to the last step, geometric): a run trains stably where its training "
        f"accuracy is >= chance + {STABLE_FRACTION} x (its peak - chance); learning rates are geometric means over "
        "seeds (x/÷ geometric std), accuracy and decades mean ± std."
    )
    if "ratio" in table.attrs:
        hi_ratio, width_ratio = table.attrs["ratio"]
        caption += (
            f" Highest stable lr, BN / no BN: {hi_ratio:.1f}x; stable range, BN / no BN: {width_ratio:.1f}x wider."
        )
    written = write_table(table, out, "lr_stress_table", caption)
    return written + write_table(per_run.round(5), out, "lr_stress_per_run", "Stable lr range per run (seed).")


def _figure(c: pd.DataFrame, per_run: pd.DataFrame, arms: list, chance: float, out) -> list:
    """Schedule, training accuracy and training loss against the learning rate, every seed of every arm."""
    n_seeds = int(per_run.groupby("arm")["seed"].nunique().min())
    fig, axes = new_figure(ncols=3, width=13.0, height=3.6)
    ax_lr, ax_acc, ax_loss = axes[0]
    colors = {arm: f"C{i}" for i, arm in enumerate(arms)}
    for arm in arms:
        a = c[c["arm"] == arm]
        first = a[a["seed"] == a["seed"].min()]
        ax_lr.plot(np.arange(1, len(first) + 1), first["lr"], color=colors[arm], label=LABELS.get(arm, arm))
        for i, (_, g) in enumerate(a.groupby("seed")):
            label = LABELS.get(arm, arm) if i == 0 else None
            ax_acc.plot(g["lr"], g["train_acc"] * 100, color=colors[arm], alpha=0.8, label=label)
            ax_loss.plot(g["lr"], g["train_loss"], color=colors[arm], alpha=0.8, label=label)
            if g["diverged"].iloc[0]:  # at the lr of the epoch in which the loss became NaN, not the last finite one
                ax_acc.plot(g["nan_lr"].iloc[0], chance * 100, "x", color=colors[arm], ms=7, mew=1.5)
                ax_loss.axvline(g["nan_lr"].iloc[0], color=colors[arm], lw=0.8, ls="--", alpha=0.6)
        p = per_run[per_run["arm"] == arm]
        lo, hi = np.exp(np.log(p["lr_low"]).mean()), np.exp(np.log(p["lr_high"]).mean())
        ax_acc.axvspan(lo, hi, color=colors[arm], alpha=0.08)
    ax_lr.set_yscale("log")
    ax_lr.set(xlabel='"epoch" (a few steps each)', ylabel="learning rate", title="schedule: lr grows exponentially")
    ax_acc.set_xscale("log")
    ax_acc.axhline(chance * 100, color="grey", lw=0.8, ls=":")
    ax_acc.set(
        xlabel="learning rate",
        ylabel="training accuracy (%)",
        title=f"training accuracy, n = {n_seeds} seeds per arm\n(band: stable range; x on the chance line: loss NaN)",
    )
    ax_loss.set_xscale("log")
    ax_loss.set_yscale("log")
    ax_loss.set(xlabel="learning rate", ylabel="training loss", title="training loss (dashed: the lr of a NaN)")
    for ax in (ax_lr, ax_acc, ax_loss):
        ax.legend()
    return save_figure(fig, out, "lr_stress_accuracy_vs_lr")


def analyze(runs: pd.DataFrame, epochs: pd.DataFrame, out) -> list:
    c = curves(runs, epochs)
    arms = arm_order(c["arm"], ARM_ORDER)
    chance = 1.0 / 10
    groups = c.groupby(["arm", "seed"])
    per_run = pd.DataFrame([{"arm": a, "seed": s, **stable_range(g.sort_values("lr"), chance)} for (a, s), g in groups])
    return _tables(per_run, arms, out) + _figure(c, per_run, arms, chance, out)
