"""C5 analysis: where EMA statistics are wrong ("false overfitting") and how many samples Precise BN needs."""

from __future__ import annotations

import pandas as pd

from bnlab.results.figures import new_figure, save_figure
from bnlab.results.tables import aggregate, mean_std_cells, write_table

KEYS = ["norm.momentum", "train.epochs", "optim.lr"]


def analyze(runs: pd.DataFrame, epochs: pd.DataFrame, out) -> list:
    done = runs[runs["status"] == "completed"].copy()
    precise = sorted((c for c in done if c.startswith("val_err_precise_")), key=lambda c: int(c.rsplit("_", 1)[1]))
    best = precise[-1] if precise else "val_err_precise"
    done["ema_excess"] = done["val_err_running"] - done[best]  # EMA error beyond what population stats give
    metrics = ["val_err_running", *precise, "val_err_batch", "ema_excess"]
    agg = aggregate(done, KEYS, metrics)
    table = mean_std_cells(agg, metrics)
    table.insert(1, "lambda (EMA decay)", [round(1 - m, 4) for m in table["norm.momentum"]])
    written = write_table(
        table,
        out,
        "ema_vs_precise_table",
        "Validation error (%) with EMA statistics, Precise BN "
        "over N training images, and batch statistics; ema_excess = EMA minus Precise BN "
        f"({best.rsplit('_', 1)[1]}). Mean ± std over seeds.",
    )
    panels = agg[["train.epochs", "optim.lr"]].drop_duplicates().sort_values(["train.epochs", "optim.lr"])
    fig, axes = new_figure(ncols=len(panels), width=3.3 * len(panels), height=3.1)
    for ax, (_, p) in zip(axes[0], panels.iterrows()):
        a = agg[(agg["train.epochs"] == p["train.epochs"]) & (agg["optim.lr"] == p["optim.lr"])].sort_values(KEYS[0])
        for m, style in [("val_err_running", "o-"), (best, "s-"), ("val_err_batch", "^--")]:
            ax.errorbar(
                a[KEYS[0]],
                a[f"{m}_mean"] * 100,
                yerr=a[f"{m}_std"] * 100,
                fmt=style,
                capsize=3,
                label={"val_err_running": "EMA", "val_err_batch": "batch stats"}.get(m, f"Precise BN ({m[16:]})"),
            )
        ax.set_xscale("log")
        ax.set(
            xlabel="BN momentum (1 - lambda)",
            ylabel="val error (%)",
            title=f"{int(p['train.epochs'])} epochs, lr {p['optim.lr']}",
        )
    axes[0][0].legend()
    written += save_figure(fig, out, "ema_vs_precise_error_vs_momentum")
    if precise:
        fig, axes = new_figure()
        ax = axes[0][0]
        sizes = [int(c.rsplit("_", 1)[1]) for c in precise]
        for (ep, lr), g in agg.groupby(["train.epochs", "optim.lr"]):
            g = g[g[KEYS[0]] == 0.1]  # PyTorch's default momentum
            if len(g):
                ax.plot(sizes, [g[f"{c}_mean"].iloc[0] * 100 for c in precise], "o-", label=f"{ep} ep, lr {lr}")
        ax.set_xscale("log", base=2)
        ax.set(xlabel="Precise BN samples", ylabel="val error (%)", title="Precise BN vs samples (momentum 0.1)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: the curves span the whole height
        written += save_figure(fig, out, "ema_vs_precise_samples")
    return written
