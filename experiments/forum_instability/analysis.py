"""C4 analysis: the forum's figure per arm, the last BN's running_var minimum over time, flagged runs per arm."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bnlab.results.figures import mean_curves, new_figure, save_figure
from bnlab.results.tables import mean_std_text, write_table

ARM_ORDER = ["bn_lr3e-4", "bn_lr6e-5", "bn_eps0.1", "brn", "groupnorm"]
CURVES = {
    "train_loss": "train loss",
    "val_loss_running": "val loss, eval mode (EMA)",
    "val_loss_batch": "val loss, train mode (batch stats)",
    "val_loss_precise": "val loss, Precise BN",
}


def _per_run(done: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    e = epochs[epochs["run_id"].isin(done["run_id"])].copy()
    e["gap"] = e["val_loss_running"] - e.get("val_loss_batch", np.nan)
    g = e.groupby("run_id")
    out = pd.DataFrame(
        {
            "flagged": g["health/ema_corruption"].max() if "health/ema_corruption" in e else 0,
            "max_gap": g["gap"].max(),
            "min_last_bn_var": g["health/last_bn_running_var_min"].min()
            if "health/last_bn_running_var_min" in e
            else np.nan,
            "max_dead_fraction": g["health/dead_fraction"].max() if "health/dead_fraction" in e else np.nan,
        }
    )
    return done.set_index("run_id")[["arm"]].join(out)


def analyze(runs: pd.DataFrame, epochs: pd.DataFrame, out) -> list:
    done = runs[runs["status"].isin(["completed", "diverged"])].copy()
    arms = [a for a in ARM_ORDER if a in set(done["arm"])] + sorted(set(done["arm"]) - set(ARM_ORDER))
    per_run = _per_run(done, epochs)
    rows = []
    for arm in arms:
        d, p = done[done["arm"] == arm], per_run[per_run["arm"] == arm]
        row = {
            "arm": arm,
            "runs": len(d),
            "runs flagged (EMA corruption)": int((p["flagged"] > 0).sum()),
            "max eval-train val-loss gap": p["max_gap"].max(),
            "min last-BN running_var": p["min_last_bn_var"].min(),
            "max dead-channel fraction": p["max_dead_fraction"].max(),
        }
        for m in ("val_loss_running", "val_loss_batch", "val_loss_precise", "val_err_running", "val_err_precise"):
            if m in d:
                row[f"final {m}"] = mean_std_text(d[m].mean(), d[m].std(ddof=1), int(d[m].notna().sum()), 3)
        rows.append(row)
    written = write_table(
        pd.DataFrame(rows),
        out,
        "forum_table",
        "Forum instability at our scale, per arm over seeds: "
        "runs the BN health monitor flagged, worst eval-mode minus train-mode validation loss, "
        "smallest running_var of the last BN layer, and final losses/errors (mean ± std).",
    )
    curves = epochs.join(done.set_index("run_id")["arm"], on="run_id", how="inner")
    fig, axes = new_figure(ncols=len(arms), width=3.2 * len(arms), height=3.0)
    for ax, arm in zip(axes[0], arms):
        c = curves[curves["arm"] == arm].assign(curve="")
        for metric, label in CURVES.items():
            if metric in c:
                mean_curves(ax, c, "epoch", metric, "curve", scale=1.0, label_fmt=label)
        ax.set(title=arm, xlabel='"epoch"', ylabel="loss (BCE - soft F1)")
    axes[0][0].legend(fontsize=7)
    written += save_figure(fig, out, "forum_losses")
    if "health/last_bn_running_var_min" in curves:
        fig, axes = new_figure()
        ax = axes[0][0]
        for arm in arms:
            c = curves[curves["arm"] == arm]
            if c["health/last_bn_running_var_min"].notna().any():
                s = c.groupby("epoch")["health/last_bn_running_var_min"].min()
                ax.plot(s.index, s.values, label=arm)
        ax.set_yscale("log")
        ax.set(xlabel='"epoch"', ylabel="min running_var, last BN (over seeds)", title="last BN layer's running_var")
        ax.legend()
        written += save_figure(fig, out, "forum_last_bn_running_var")
    return written
