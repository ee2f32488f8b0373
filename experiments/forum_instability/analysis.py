"""C4 analysis in the thread's terms: per arm and seed, the three loss curves of the forum's figure (train loss,
eval-mode val loss, train-mode val loss) with the lr; the last BN layer's smallest running_var on a log axis
(float32's denormal range marked); and a table per arm with the BN health monitor's events by cause, the smallest
running_var, the largest eval-minus-train gap, the gap at the end (healed or not) and final metrics."""

from __future__ import annotations

import ast

import numpy as np
import pandas as pd

from bnlab.results.figures import new_figure, save_figure
from bnlab.results.tables import mean_std_text, write_table

ARM_ORDER = ["bn_high_lr", "bn_low_lr", "bn_eps0.1", "groupnorm", "brn"]
ARM_LABELS = {
    "bn_high_lr": "BN, high lr",
    "bn_low_lr": "BN, low lr",
    "bn_eps0.1": "BN eps 0.1, high lr",
    "groupnorm": "GroupNorm, high lr",
    "brn": "BRN, high lr",
}
CURVES = {  # the thread's colours: blue train, red val (eval mode); ours adds the train-mode val loss
    "train_loss": ("train loss", "tab:blue", "-"),
    "val_loss_running": ("val loss, eval mode (EMA)", "tab:red", "-"),
    "val_loss_batch": ("val loss, train mode (batch stats)", "tab:green", "--"),
}
CAUSES = {"collapsed_variance": "collapsed variance", "stale_ema": "stale EMA", "batch_composition": "batch comp."}
FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # 1.18e-38: below it float32 is denormal
FIXED_POINT = 4 * 2.0**-149  # 5.6e-45: PyTorch's EMA at momentum 0.1 stops here (0.9 x 4 x 2^-149 rounds to itself)
FLOOR = 1e-46  # where an exact 0 is drawn on the log axis


def _events(cell) -> list[dict]:
    if isinstance(cell, str):
        return ast.literal_eval(cell) if cell.startswith("[") else []
    if cell is None or isinstance(cell, float):  # missing
        return []
    return [dict(e) for e in cell]  # a list, or the array parquet gives back


def _arm_order(arms) -> list[str]:
    return [a for a in ARM_ORDER if a in set(arms)] + sorted(set(arms) - set(ARM_ORDER))


def _fmt(values: pd.Series, digits: int = 3) -> str:
    v = values.dropna()
    return mean_std_text(v.mean(), v.std(ddof=1), len(v), digits) if len(v) else "–"


def _event_cell(runs: pd.DataFrame) -> str:
    """'collapsed variance 2/2 (first ep 9, 11; e.g. blocks.6.norm_dw ch [3, 17])' per cause seen."""
    parts = []
    for kind, label in CAUSES.items():
        hits = []
        for _, r in runs.iterrows():
            mine = [e for e in _events(r.get("events")) if e.get("event") == kind]
            if mine:
                hits.append(mine)
        if not hits:
            continue
        first = ", ".join(str(m[0]["epoch"]) for m in hits)
        last = hits[0][-1]["layers"][0]
        parts.append(
            f"{label} {len(hits)}/{len(runs)} (first ep {first}; {sum(len(m) for m in hits)} checks; "
            f"e.g. {last['layer']} ch {[int(c) for c in last['channels'][:6]]})"
        )
    return "; ".join(parts) or "none"


def analyze(runs: pd.DataFrame, epochs: pd.DataFrame, out) -> list:
    done = runs[runs["status"].isin(["completed", "diverged"])].copy()
    arms = _arm_order(done["arm"])
    e = epochs.join(done.set_index("run_id")[["arm", "seed"]], on="run_id", how="inner").sort_values("epoch")
    e["gap"] = e["val_loss_running"] - e["val_loss_batch"]
    rvcol = "health/last_bn_running_var_min"

    rows = []
    for arm in arms:
        d, c = done[done["arm"] == arm], e[e["arm"] == arm]
        per_run = c.groupby("run_id")
        last = c.loc[per_run["epoch"].idxmax()]
        rv = c[rvcol].dropna() if rvcol in c else pd.Series(dtype=float)
        row = {
            "arm": ARM_LABELS.get(arm, arm),
            "runs": len(d),
            "BN health events (runs, cause, first epoch)": _event_cell(d),
            "min running_var, last BN": f"{rv.min():.3g}" if len(rv) else "- (no running stats)",
            "max eval - train val loss after epoch 2": f"{c[c['epoch'] > 2]['gap'].max():.3f}",
            "final eval - train val loss": _fmt(last["gap"]),
            "final lr": f"{last['lr'].mean():.2g}",
        }
        for m, label in (
            ("train_loss", "final train loss"),
            ("val_loss_running", "final val loss, EMA"),
            ("val_loss_batch", "final val loss, batch"),
            ("val_loss_precise", "final val loss, Precise BN"),
            ("val_err_running", "final val err, EMA"),
            ("val_err_precise", "final val err, Precise BN"),
        ):
            if m in d:
                row[label] = _fmt(d[m])
        rows.append(row)
    written = write_table(
        pd.DataFrame(rows),
        out,
        "forum_table",
        "Forum instability per arm (mean ± std over seeds): the BN health monitor's events by cause (runs with one, "
        "the epoch of each run's first, checks flagged, one named layer and its channels), the smallest running_var "
        "of the last BN layer, the largest eval-mode minus train-mode validation loss after 'epoch' 2 (the EMA's "
        "start-up excluded) and the final one, final lr and final metrics.",
    )

    seeds = sorted(e["seed"].unique())
    bpe = done["train.batches_per_epoch"].dropna()
    xlabel = f'"epoch" ({int(bpe.iloc[0])} batches)' if len(bpe) else '"epoch"'
    fig, axes = new_figure(ncols=len(arms), nrows=len(seeds), width=3.3 * len(arms), height=2.6 * len(seeds))
    lo = np.nanpercentile(e[list(CURVES)].to_numpy(), 1)
    hi = max(np.nanpercentile(e[list(CURVES)].to_numpy(), 99.5), lo + 0.2)
    for j, arm in enumerate(arms):
        for i, seed in enumerate(seeds):
            ax = axes[i][j]
            c = e[(e["arm"] == arm) & (e["seed"] == seed)]
            if c.empty:
                ax.set_axis_off()
                ax.text(
                    0.5,
                    0.5,
                    f"{ARM_LABELS.get(arm, arm)}, seed {seed}: not finished",
                    ha="center",
                    fontsize=8,
                    transform=ax.transAxes,
                )
                continue
            for metric, (label, color, ls) in CURVES.items():
                ax.plot(c["epoch"], c[metric], color=color, ls=ls, lw=1.2, label=label)
            ax.set_ylim(lo - 0.05, hi + 0.05)
            clipped = c[c["val_loss_running"] > hi + 0.05]
            ax.plot(clipped["epoch"], [hi + 0.05] * len(clipped), "^", color="tab:red", ms=5, clip_on=False)
            for x in c["epoch"][c["lr"].diff() < 0]:  # the plateau scheduler's decays (lr x 0.2)
                ax.axvline(x - 0.5, color="0.5", lw=0.8, ls=":")
                ax.text(x - 0.3, hi, "lr x0.2", fontsize=6, color="0.4", va="top")
            ax.set_title(f"{ARM_LABELS.get(arm, arm)}, seed {seed}", fontsize=8)
            if i == len(seeds) - 1:
                ax.set_xlabel(xlabel)
            if j == 0:
                ax.set_ylabel("BCE - soft F1")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, -0.01))
    fig.subplots_adjust(left=0.06, right=0.95, bottom=0.14, top=0.93, wspace=0.45, hspace=0.35)
    written += save_figure(fig, out, "forum_losses")

    if rvcol in e:
        fig, axes = new_figure(width=7.5, height=4.2)
        ax = axes[0][0]
        ax.axhspan(FLOOR, FLOAT32_TINY, color="0.9", zorder=0)
        right = ax.get_yaxis_transform()  # x in axes fraction, y in data
        ax.text(
            0.99,
            1e-39,
            "float32 denormal range (< 1.18e-38)",
            fontsize=8,
            color="0.4",
            ha="right",
            va="top",
            transform=right,
        )
        ax.axhline(FIXED_POINT, color="0.5", lw=0.8, ls=":")
        ax.text(
            0.99,
            FIXED_POINT * 4,
            "5.6e-45 = 4 x 2**-149, the EMA fixed point",
            fontsize=7,
            color="0.4",
            ha="right",
            transform=right,
        )
        colors = dict(zip(arms, ["tab:red", "tab:blue", "tab:orange", "tab:green", "tab:purple"], strict=False))
        for arm in arms:
            for k, seed in enumerate(seeds):
                c = e[(e["arm"] == arm) & (e["seed"] == seed)].dropna(subset=[rvcol])
                if c.empty:
                    continue
                ax.plot(
                    c["epoch"],
                    c[rvcol].clip(lower=FLOOR),
                    color=colors.get(arm),
                    ls=["-", "--", ":"][k % 3],
                    label=ARM_LABELS.get(arm, arm) if k == 0 else None,
                )
        ax.set_yscale("log")
        ax.set_ylim(FLOOR / 3, 10)
        ax.set(
            xlabel=xlabel,
            ylabel="min running_var, last BN layer",
            title="Last BN layer's smallest running_var (seeds: line styles; GroupNorm has none)",
        )
        ax.legend(fontsize=8, loc="upper right")
        written += save_figure(fig, out, "forum_last_bn_running_var")
    return written
