"""C3 analysis: the paper's measures per arm (table) and their curves over training (figure)."""

from __future__ import annotations

import pandas as pd

from bnlab.results.figures import mean_curves, new_figure, save_figure
from bnlab.results.tables import aggregate, mean_std_cells, write_table

ARMS = {
    "bn": "BN (16 x 2 batches)",
    "split_halves": "BN, split halves",
    "brn": "BRN (16 x 2 batches)",
    "iid": "BN, i.i.d. batches",
    "group_pairs": "GroupNorm (16 x 2 batches)",
    "group_iid": "GroupNorm, i.i.d. batches",
}
# Ioffe 2017, sec. 4.3 (Inception v3, ImageNet): test top-1 %, with train accuracy where reported
SOURCE = {
    "bn": "67 (train 72.8); in training mode on 25 x 2 test batches: 76.5",
    "split_halves": "77.4 (140k)",
    "brn": "78.5 (120k)",
    "iid": "78.3",
    "group_pairs": "-",
    "group_iid": "-",
}
# column -> (table header, 1 - this error column in runs/epochs)
MEASURES = {
    "train_acc": ("train acc (eval mode, EMA)", "train_err_running"),
    "test_acc": ("test acc (EMA, each image once)", "val_err_running"),
    "test_acc_train_mode": ("test acc, training mode on 25 x 2 batches", "val_err_batch"),
    "train_acc_batch": ("train acc during training (batch stats)", "train_err"),
}


def _accuracies(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    out = df.copy()
    present = [m for m, (_, err) in MEASURES.items() if err in out]
    for m in present:
        out[m] = 1 - out[MEASURES[m][1]]
    return out, present


def analyze(runs: pd.DataFrame, epochs: pd.DataFrame, out) -> list:
    done, metrics = _accuracies(runs[runs["status"] == "completed"])
    agg = aggregate(done, ["arm"], metrics)
    agg = agg.set_index("arm").reindex([a for a in ARMS if a in set(agg["arm"])]).reset_index()
    table = mean_std_cells(agg, metrics)
    table["paper test top-1"] = table["arm"].map(SOURCE)
    table["arm"] = table["arm"].map(ARMS)
    table = table.rename(columns={m: MEASURES[m][0] for m in metrics})
    written = write_table(
        table,
        out,
        "renorm_noniid_table",
        "Accuracy (%), mean ± std over seeds, at the end of training; batches of 16 label draws x 2 images "
        "(glyphs, 500 classes). Paper: Inception v3 / ImageNet (Ioffe 2017, sec. 4.3).",
    )
    curves = epochs.join(done.set_index("run_id")["arm"], on="run_id", how="inner")
    curves, present = _accuracies(curves)
    curves["arm"] = curves["arm"].map(ARMS)
    panels = [m for m in ("test_acc", "train_acc", "test_acc_train_mode") if m in present]
    titles = {
        "test_acc": "test, EMA statistics (each image once)",
        "train_acc": "training images, eval mode (the paper's train accuracy)",
        "test_acc_train_mode": "test, batch statistics of 25 x 2 batches",
    }
    fig, axes = new_figure(ncols=len(panels))
    colors = dict(zip(ARMS.values(), ("C0", "C2", "C3", "C1", "C4", "C5")))  # one colour per arm in every panel
    for ax, m in zip(axes[0], panels):
        for arm, group in curves.dropna(subset=[m]).groupby("arm"):
            mean_curves(ax, group, "step", m, "arm", color=colors[arm])
        ax.set(xlabel="training step", ylabel="accuracy (%)", title=titles[m])
    axes[0][0].legend()
    written += save_figure(fig, out, "renorm_noniid_accuracy_vs_step")
    return written
