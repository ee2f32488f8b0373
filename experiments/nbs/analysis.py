"""C1 analysis: the NBS table (train/val error vs normalization batch size) and error-vs-NBS figure."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bnlab.results.figures import errorbar_lines, new_figure, save_figure
from bnlab.results.tables import aggregate, mean_std_cells, write_table

# Wu, "Devils in BatchNorm" (ResNet-50, ImageNet, SGD batch fixed): error in % by NBS
SOURCE = {
    2: (30, 35),
    4: (28, 27),
    8: (26, 25),
    16: (24, 23.7),
    32: (22, 23.6),
    64: (21, 23.6),
    128: (20, 23.7),
    1024: (18, 23.9),
}
METRICS = ["train_err", "val_err_running", "val_err_precise", "val_err_batch"]
LABELS = {
    "train_err": "train (batch stats)",
    "val_err_running": "val, EMA stats",
    "val_err_precise": "val, Precise BN",
    "val_err_batch": "val, batch stats",
}


def analyze(runs: pd.DataFrame, epochs: pd.DataFrame, out) -> list:
    done = runs[runs["status"] == "completed"].copy()
    done["nbs"] = done["norm.nbs"].fillna(done["train.batch_size"]).astype(int)
    processes = done["train.processes"].fillna(1).astype(int) if "train.processes" in done else 1
    done["how"] = ["Ghost BN" if n < b else "BN" for n, b in zip(done["nbs"], done["train.batch_size"])]
    done.loc[processes > 1, "how"] = [
        f"Sync BN, {p} x {b // p}"
        for p, b in zip(processes[processes > 1], done.loc[processes > 1, "train.batch_size"])
    ]
    metrics = [m for m in METRICS if m in done]
    single = done[processes == 1]
    agg = aggregate(single, ["nbs"], metrics)
    table = mean_std_cells(aggregate(done, ["nbs", "how"], metrics), metrics)
    table["source train / val err"] = [f"{SOURCE[n][0]} / {SOURCE[n][1]}" if n in SOURCE else "" for n in table["nbs"]]
    written = write_table(
        table,
        out,
        "nbs_table",
        "Error (%) by normalization batch size, mean ± std over seeds; "
        "SGD batch and learning rate fixed. Source: ResNet-50/ImageNet (Wu, Devils in BatchNorm).",
    )
    fig, axes = new_figure(ncols=2, width=9.5)
    ax = axes[0][0]
    for m in metrics:
        errorbar_lines(ax, agg, "nbs", m, label_fmt=LABELS[m])
    synced = aggregate(done[processes > 1], ["nbs"], metrics) if (processes > 1).any() else None
    if synced is not None:  # the Sync BN arm: same NBS reached across processes, drawn as open markers
        for m in metrics:
            ax.errorbar(
                synced["nbs"],
                synced[f"{m}_mean"] * 100,
                yerr=synced[f"{m}_std"] * 100,
                fmt="D",
                mfc="none",
                color="k",
                capsize=3,
                label="Sync BN (2 processes)" if m == metrics[0] else None,
            )
    ax.set_xscale("log", base=2)
    ax.set(xlabel="normalization batch size (NBS)", ylabel="error (%)", title="bnlab (this run)")
    ax.legend()
    src = pd.DataFrame([(n, t, v) for n, (t, v) in SOURCE.items()], columns=["nbs", "train", "val"])
    ax = axes[0][1]
    ax.plot(src.nbs, src.train, "o-", label="train")
    ax.plot(src.nbs, src.val, "s-", label="val")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="NBS", ylabel="error (%)", title="source: ResNet-50 / ImageNet (slide)")
    ax.legend()
    written += save_figure(fig, out, "nbs_error_vs_nbs")
    return written


def verdict_numbers(agg: pd.DataFrame) -> dict:
    """Shape checks the README reports: is train error monotone in NBS, where is the val minimum."""
    a = agg.sort_values("nbs")
    return {
        "train_err_monotone_decreasing": bool(np.all(np.diff(a["train_err_mean"]) <= 0.002)),
        "val_err_running_argmin_nbs": int(a.loc[a["val_err_running_mean"].idxmin(), "nbs"]),
    }
