"""C3 analysis: the paper's table (train and test accuracy per arm) and accuracy-vs-step curves."""

from __future__ import annotations

import pandas as pd

from bnlab.results.figures import mean_curves, new_figure, save_figure
from bnlab.results.tables import aggregate, mean_std_cells, write_table

ARMS = {
    "bn": "BN (16 x 2 batches)",
    "split_halves": "BN, split halves",
    "brn": "BRN (16 x 2 batches)",
    "iid": "BN, i.i.d. batches",
}
# Ioffe 2017, sec. 4.4 (Inception v3, ImageNet): test top-1 %, with train accuracy where reported
SOURCE = {
    "bn": "67 (train 72.8); in training mode on 25 x 2 test batches: 76.5",
    "split_halves": "77.4 (140k)",
    "brn": "78.5 (120k)",
    "iid": "78.3",
}


def analyze(runs: pd.DataFrame, epochs: pd.DataFrame, out) -> list:
    done = runs[runs["status"] == "completed"].copy()
    done["test_acc"] = 1 - done["val_err_running"]
    done["train_acc"] = 1 - done["train_err"]
    metrics = ["train_acc", "test_acc"]
    if "val_err_batch" in done:
        done["test_acc_train_mode"] = 1 - done["val_err_batch"]
        metrics.append("test_acc_train_mode")
    agg = aggregate(done, ["arm"], metrics)
    agg = agg.set_index("arm").reindex([a for a in ARMS if a in set(agg["arm"])]).reset_index()
    table = mean_std_cells(agg, metrics)
    table["paper test top-1"] = table["arm"].map(SOURCE)
    table["arm"] = table["arm"].map(ARMS)
    table = table.rename(
        columns={
            "train_acc": "train acc (batch stats)",
            "test_acc": "test acc (EMA)",
            "test_acc_train_mode": "test acc, training mode on 25 x 2 batches",
        }
    )
    written = write_table(
        table,
        out,
        "renorm_noniid_table",
        "Accuracy (%), mean ± std over seeds; batches of "
        "16 label draws x 2 images. Paper: Inception v3 / ImageNet (Ioffe 2017, sec. 4.4).",
    )
    curves = epochs.join(done.set_index("run_id")["arm"], on="run_id", how="inner")
    curves["arm"] = curves["arm"].map(ARMS)
    curves["test_acc"] = 1 - curves["val_err_running"]
    fig, axes = new_figure()
    ax = axes[0][0]
    mean_curves(ax, curves, "step", "test_acc", "arm")
    ax.set(xlabel="training step", ylabel="test accuracy (%), EMA statistics", title="non-i.i.d. 16 x 2 batches")
    ax.legend()
    written += save_figure(fig, out, "renorm_noniid_accuracy_vs_step")
    return written
