"""C5 analysis: where EMA statistics are wrong ("false overfitting"), why, and how many samples Precise BN needs.

The EMA's excess error over Precise BN splits in two with the EMA re-run on the frozen final model
(eval mode ema_frozen, same momentum and number of steps, from the initial statistics): init_bias = frozen EMA
minus Precise BN (the initial values' remaining weight (1 - momentum)^steps, plus batch noise), staleness =
training EMA minus frozen EMA (statistics of older models: the "moving model").
"""

from __future__ import annotations

import pandas as pd

from bnlab.results.figures import mean_of, new_figure, save_figure, say_bands
from bnlab.results.runs import completed
from bnlab.results.tables import aggregate, mean_std_cells, write_table

KEYS = ["norm.momentum", "train.epochs", "optim.lr"]
LABELS = {"val_err_running": "EMA", "val_err_ema_frozen": "EMA on frozen model", "val_err_batch": "batch stats"}


def _table(agg: pd.DataFrame, metrics: list, best: str, frozen: list, out) -> list:
    """EMA, frozen-model EMA, Precise BN and batch statistics per momentum, schedule length and lr."""
    table = mean_std_cells(agg, metrics)
    table.insert(1, "lambda (EMA decay)", [round(1 - m, 4) for m in table["norm.momentum"]])
    # weight the EMA still gives its initial values after training (PyTorch's running = (1 - m) running + m batch)
    table.insert(4, "initial weight", [f"{(1 - m) ** s:.3g}" for m, s in zip(agg["norm.momentum"], agg["step_mean"])])
    return write_table(
        table,
        out,
        "ema_vs_precise_table",
        "Validation error (%) with EMA statistics, Precise BN "
        "over N training images, and batch statistics; ema_excess = EMA minus Precise BN "
        f"({best.rsplit('_', 1)[1]})"
        + (
            "; val_err_ema_frozen = the same EMA re-run on the frozen final model, splitting ema_excess into "
            "init_bias (frozen EMA - Precise BN) and staleness (EMA - frozen EMA); "
            "initial weight = (1 - momentum)^steps"
            if frozen
            else ""
        )
        + ". Mean ± std over seeds (the mean alone for one run).",
    )


def _error_vs_momentum(agg: pd.DataFrame, best: str, frozen: list, out) -> list:
    """One panel per (epochs, lr): validation error of each kind of statistics against BN momentum."""
    panels = agg[["train.epochs", "optim.lr"]].drop_duplicates().sort_values(["train.epochs", "optim.lr"])
    fig, axes = new_figure(ncols=len(panels), width=3.3 * len(panels), height=3.1)
    for ax, (_, p) in zip(axes[0], panels.iterrows()):
        a = agg[(agg["train.epochs"] == p["train.epochs"]) & (agg["optim.lr"] == p["optim.lr"])].sort_values(KEYS[0])
        curves = [("val_err_running", "o-"), *[(f, "D:") for f in frozen], (best, "s-"), ("val_err_batch", "^--")]
        for m, style in curves:
            ax.errorbar(
                a[KEYS[0]],
                a[f"{m}_mean"] * 100,
                yerr=a[f"{m}_std"] * 100,
                fmt=style,
                capsize=3,
                label=LABELS.get(m, f"Precise BN ({m[16:]})"),
            )
        ax.set_xscale("log")
        ax.set(
            xlabel="BN momentum (1 - lambda)",
            ylabel="val error (%)",
            title=f"{int(p['train.epochs'])} epochs, lr {p['optim.lr']}, {mean_of(a['n'])}",
        )
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1))  # outside: the curves cross every region
    say_bands(fig, "bars", n_in="each panel's title")  # the legend names statistics, not groups
    return save_figure(fig, out, "ema_vs_precise_error_vs_momentum")


def _error_vs_samples(agg: pd.DataFrame, precise: list, out) -> list:
    """Precise BN's error against its number of samples: at PyTorch's default momentum (0.1) where the grid has it,
    else at each momentum that was run (the tested settings); no figure when no run scored Precise BN."""
    momenta = [0.1] if (agg[KEYS[0]] == 0.1).any() else sorted(agg[KEYS[0]].unique())
    rows = agg[agg[KEYS[0]].isin(momenta)]
    if rows.empty:
        return []
    fig, axes = new_figure()
    ax = axes[0][0]
    sizes = [int(c.rsplit("_", 1)[1]) for c in precise]
    for (ep, lr, m), g in rows.groupby(["train.epochs", "optim.lr", KEYS[0]]):
        label = f"{ep} ep, lr {lr}" + (f", momentum {m:g}" if len(momenta) > 1 else "")
        ax.plot(sizes, [g[f"{c}_mean"].iloc[0] * 100 for c in precise], "o-", label=label)
    ax.set_xscale("log", base=2)
    which = f"momentum {momenta[0]:g}" if len(momenta) == 1 else "each momentum run"
    title = f"Precise BN vs samples ({which}), {mean_of(rows['n'])}"
    ax.set(xlabel="Precise BN samples", ylabel="val error (%)", title=title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: the curves span the whole height
    return save_figure(fig, out, "ema_vs_precise_samples")


def analyze(runs: pd.DataFrame, epochs: pd.DataFrame, out) -> list:
    done = completed(runs)
    precise = sorted((c for c in done if c.startswith("val_err_precise_")), key=lambda c: int(c.rsplit("_", 1)[1]))
    best = precise[-1] if precise else "val_err_precise"
    done["ema_excess"] = done["val_err_running"] - done[best]  # EMA error beyond what population stats give
    frozen = ["val_err_ema_frozen"] if "val_err_ema_frozen" in done else []
    split = []
    if frozen:
        done["init_bias"] = done["val_err_ema_frozen"] - done[best]  # the EMA on a model that stood still
        done["staleness"] = done["val_err_running"] - done["val_err_ema_frozen"]  # what the moving model adds
        split = ["init_bias", "staleness"]
    metrics = ["val_err_running", *frozen, *precise, "val_err_batch", "ema_excess", *split]
    agg = aggregate(done, KEYS, [*metrics, "step"])
    written = _table(agg, metrics, best, frozen, out) + _error_vs_momentum(agg, best, frozen, out)
    return written + (_error_vs_samples(agg, precise, out) if precise else [])
