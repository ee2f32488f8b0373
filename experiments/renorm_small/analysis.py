"""C2 analysis: accuracy vs training step for BN/BRN at NBS 4 and 32, and the final-accuracy table."""

from __future__ import annotations

import pandas as pd

from bnlab.results.figures import mean_curves, new_figure, save_figure
from bnlab.results.tables import aggregate, mean_std_cells, write_table

# Ioffe 2017, sec. 4.3 (Inception v3, ImageNet, top-1 %): arm -> (accuracy, at step)
SOURCE = {
    "BN, NBS 32": "78.3 (130k steps)",
    "BN, NBS 4": "74.2 (210k steps)",
    "BRN, NBS 4": "76.5 (130k steps)",
    "BRN, NBS 32": "not reported (extra arm)",
}


def arm_label(df: pd.DataFrame) -> pd.Series:
    name = df["norm.name"].map({"batch": "BN", "renorm": "BRN"})
    return name + ", NBS " + df["norm.nbs"].fillna(df["train.batch_size"]).astype(int).astype(str)


def analyze(runs: pd.DataFrame, epochs: pd.DataFrame, out) -> list:
    done = runs[runs["status"] == "completed"].copy()
    done["arm"] = arm_label(done)
    for split in ("running", "batch"):
        if f"val_err_{split}" in done:
            done[f"test_acc_{split}"] = 1 - done[f"val_err_{split}"]
    done["train_acc"] = 1 - done["train_err"]
    metrics = [m for m in ("test_acc_running", "test_acc_batch", "train_acc") if m in done]
    table = mean_std_cells(aggregate(done, ["arm"], metrics), metrics)
    table["source top-1 (Inception v3 / ImageNet)"] = table["arm"].map(SOURCE).fillna("")
    written = write_table(
        table,
        out,
        "renorm_small_table",
        "Final accuracy (%), mean ± std over seeds; SGD batch 32, "
        "normalization over micro-batches of 4 or the whole batch.",
    )
    curves = epochs.join(done.set_index("run_id")["arm"], on="run_id", how="inner")
    curves["test_acc_running"] = 1 - curves["val_err_running"]
    fig, axes = new_figure()
    ax = axes[0][0]
    mean_curves(ax, curves, "step", "test_acc_running", "arm")
    ax.set(xlabel="training step", ylabel="test accuracy (%), EMA statistics", title="Batch Renorm, micro-batches")
    ax.legend()
    written += save_figure(fig, out, "renorm_small_accuracy_vs_step")
    return written
