"""C3 analysis: the paper's measures per arm (table, curves), the dose-response over images per label, and the
mate-swap probe (bnlab.diagnostics.batch_dependence) on every trained model.

The probe loads each completed run's checkpoint (run directories must exist the first time) and caches its
numbers in renorm_noniid_probe.csv beside the collected tables; later calls only redraw, unless the collected
runs are not the ones probed.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bnlab.results.figures import mean_curves, mean_of, new_figure, save_figure, say_bands
from bnlab.results.runs import arm_order, completed, measured_on
from bnlab.results.tables import aggregate, mean_std_cells, write_table

ARMS = {  # arm -> label, in table order
    "iid": "BN, i.i.d. batches",
    "bn": "BN, 16 x 2 batches",
    "bn_8x4": "BN, 8 x 4 batches",
    "bn_4x8": "BN, 4 x 8 batches",
    "split_halves": "BN 16 x 2, split halves",
    "brn": "BRN, 16 x 2 batches",
    "brn_30k": "BRN, 16 x 2 batches",
    "layer_iid": "LayerNorm, i.i.d. batches",
    "layer_pairs": "LayerNorm, 16 x 2 batches",
    "group_iid": "GroupNorm, i.i.d. batches",
    "group_pairs": "GroupNorm, 16 x 2 batches",
}
# Ioffe 2017, sec. 4.3 (Inception v3, ImageNet): test top-1 %, with train accuracy where reported
SOURCE = {
    "bn": "67 (train 72.8); in training mode on 25 x 2 test batches: 76.5",
    "split_halves": "77.4 (140k)",
    "brn": "78.5 (120k)",
    "brn_30k": "78.5 (120k)",
    "iid": "78.3",
}
# column -> (table header, 1 - this error column in runs/epochs)
MEASURES = {
    "train_acc": ("train acc (eval mode, EMA)", "train_err_running"),
    "test_acc": ("test acc (EMA, each image once)", "val_err_running"),
    "test_acc_train_mode": ("test acc, training mode on 25 x 2 batches", "val_err_batch"),
    "train_acc_batch": ("train acc during training (batch stats)", "train_err"),
}
PROBE = "renorm_noniid_probe.csv"
COMPOSITIONS = ((16, 2), (8, 4), (4, 8))  # labels x images per label of the probe's test batches (all of 32)
PROBE_BATCHES = 40


def ordered_arms(present) -> list[str]:
    return arm_order(present, list(ARMS))


def _accuracies(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    out = df.copy()
    present = [m for m, (_, err) in MEASURES.items() if err in out]
    for m in present:
        out[m] = 1 - out[MEASURES[m][1]]
    return out, present


# ---------------------------------------------------------------- the mate-swap probe, cached per set of runs


def probe_run(run_dir: Path) -> list[dict]:
    """Mate-swap accuracies of one trained run on its test images, at every probe composition."""
    from bnlab.diagnostics.batch_dependence import mate_swap
    from bnlab.train.trained import load_run

    _, job = load_run(run_dir)
    val = job.data.val
    rows = []
    for k, m in COMPOSITIONS:
        r = mate_swap(job.model, val.images, val.labels, val.transform, k, m, PROBE_BATCHES, seed=0)
        r["n_scored"] = r.pop("n")
        rows.append({"composition": f"{k}x{m}", "images_per_label": m, **r})
    return rows


def probe_table(done: pd.DataFrame, out: Path) -> pd.DataFrame:
    path = Path(out) / PROBE
    if path.exists():
        cached = pd.read_csv(path)
        if measured_on(done, cached):
            return cached
    rows = []
    for _, run in done.iterrows():
        ids = {"run_id": run["run_id"], "arm": run["arm"], "seed": int(run["seed"])}
        rows += [{**ids, **r} for r in probe_run(Path(run["run_dir"]))]
        print(f"[renorm_noniid] probed {run['run_id']} ({run['arm']}, seed {run['seed']})", flush=True)
    table = pd.DataFrame(rows)
    table["mate_gain"] = table["mates"] - table["swapped"]
    table.to_csv(path, index=False)
    return table


# ---------------------------------------------------------------- tables and figures


def accuracy_table(done: pd.DataFrame, out) -> list:
    done, metrics = _accuracies(done)
    agg = aggregate(done, ["arm"], metrics)
    agg = agg.set_index("arm").reindex(ordered_arms(agg["arm"])).reset_index()
    table = mean_std_cells(agg, metrics)
    table["paper test top-1"] = table["arm"].map(SOURCE).fillna("-")
    table["arm"] = table["arm"].map(ARMS)
    table = table.rename(columns={m: MEASURES[m][0] for m in metrics})
    return write_table(
        table,
        out,
        "renorm_noniid_table",
        "Accuracy (%), mean ± std over seeds, at the end of training; batches of 32 = labels x images per label "
        "(glyphs). Paper: Inception v3 / ImageNet, 16 x 2 (Ioffe 2017, sec. 4.3).",
    )


def probe_summary(probe: pd.DataFrame, out) -> list:
    metrics = ["mates", "swapped", "running", "mate_gain"]
    agg = aggregate(probe, ["arm", "composition"], metrics)
    agg["arm_order"] = agg["arm"].map({a: i for i, a in enumerate(ARMS)})
    agg["m"] = agg["composition"].str.split("x").str[1].astype(int)
    agg = agg.sort_values(["arm_order", "m"]).drop(columns=["arm_order", "m"])
    table = mean_std_cells(agg, metrics)
    table["arm"] = table["arm"].map(ARMS)
    table = table.rename(
        columns={
            "composition": "probe batches",
            "mates": "training mode, mates present",
            "swapped": "training mode, mates swapped out",
            "running": "eval mode (EMA)",
            "mate_gain": "mates - swapped",
        }
    )
    return write_table(
        table,
        out,
        "renorm_noniid_probe_table",
        f"Mate-swap probe: accuracy (%) on the first image of each label group of {PROBE_BATCHES} test batches "
        "of 32 (labels x images per label), mean ± std over seeds. 'mates swapped out': the same scored images, "
        "every other image replaced by one of a label found nowhere else in the batch.",
    )


COLORS = {a: f"C{i}" for i, a in enumerate(ARMS)}
DOSE = {"iid": 1, "bn": 2, "bn_8x4": 4, "bn_4x8": 8}  # BN arms by images per label (i.i.d. drawn as 1)


def curves_figure(done: pd.DataFrame, epochs: pd.DataFrame, out) -> list:
    curves = epochs.join(done.set_index("run_id")["arm"], on="run_id", how="inner")
    curves, present = _accuracies(curves)
    panels = [m for m in ("test_acc", "train_acc", "test_acc_train_mode") if m in present]
    titles = {
        "test_acc": "test, EMA statistics (each image once)",
        "train_acc": "training images, eval mode (the paper's train accuracy)",
        "test_acc_train_mode": "test, batch statistics of 25 x 2 batches",
    }
    fig, axes = new_figure(ncols=len(panels))
    for ax, m in zip(axes[0], panels):
        for arm in ordered_arms(curves["arm"]):
            group = curves[curves["arm"] == arm].dropna(subset=[m])
            n = group["run_id"].nunique()
            mean_curves(ax, group.assign(label=f"{ARMS[arm]} (n={n})"), "step", m, "label", color=COLORS[arm])
        ax.set(xlabel="training step", ylabel="accuracy (%)", title=titles[m])
    axes[0][0].legend()
    say_bands(fig)
    return save_figure(fig, out, "renorm_noniid_accuracy_vs_step")


def dose_figure(done: pd.DataFrame, probe: pd.DataFrame, out) -> list:
    """Left: BN's test accuracy against images per label (EMA and training mode); right: what the mates are worth
    to each arm's predictions in training mode, at every probe composition."""
    done, _ = _accuracies(done[done["arm"].isin(DOSE)])
    fig, axes = new_figure(ncols=2)
    ax1, ax2 = axes[0]
    if len(done):
        agg = aggregate(done.assign(m=done["arm"].map(DOSE)), ["m"], ["test_acc", "test_acc_train_mode"])
        for metric, label in (("test_acc", "eval mode (EMA)"), ("test_acc_train_mode", "training mode, 25 x 2")):
            ax1.errorbar(agg["m"], agg[f"{metric}_mean"] * 100, yerr=agg[f"{metric}_std"] * 100, marker="o",
                         capsize=3, label=label)  # fmt: skip
        ax1.set_xscale("log", base=2)
        ax1.set_xticks(list(DOSE.values()), ["i.i.d.", "16 x 2", "8 x 4", "4 x 8"])
        ax1.set(xlabel="training batches (labels x images per label)", ylabel="test accuracy (%)",
                title=f"BN: accuracy vs images per label, {mean_of(agg['n'])}")  # fmt: skip
        ax1.legend()
    agg = aggregate(probe.assign(m=probe["images_per_label"]), ["arm", "m"], ["mate_gain"])
    for arm in ordered_arms(agg["arm"]):
        g = agg[agg["arm"] == arm].sort_values("m")
        ax2.errorbar(g["m"], g["mate_gain_mean"] * 100, yerr=g["mate_gain_std"] * 100, marker="o", capsize=3,
                     color=COLORS[arm], label=ARMS[arm])  # fmt: skip
    ax2.axhline(0, color="k", lw=0.8)
    ax2.set_xscale("log", base=2)
    ax2.set_xticks([m for _, m in COMPOSITIONS], [f"{k} x {m}" for k, m in COMPOSITIONS])
    ax2.set(xlabel="probe test batches (labels x images per label)", ylabel="mates present - swapped out (points)",
            title=f"mate-swap probe, training mode, {mean_of(agg['n'])}")  # fmt: skip
    ax2.legend(fontsize=6)
    say_bands(fig, "bars", n_in="each panel's title")  # the legends name metrics and arms, not seed counts
    return save_figure(fig, out, "renorm_noniid_dose_and_probe")


CONTRASTS = {"batch": ("bn", "iid"), "layer": ("layer_pairs", "layer_iid")}  # norm -> (16 x 2 arm, i.i.d. arm)


def contrasts(done: pd.DataFrame, out) -> list:
    """Per seed and norm: test error (EMA) on 16 x 2 batches minus on i.i.d. batches (claim test C3d)."""
    err = done.pivot_table(index="seed", columns="arm", values="val_err_running")
    rows = [
        {"seed": seed, "norm": norm, "pairs_arm": pairs, "iid_arm": iid, "gap": err.at[seed, pairs] - err.at[seed, iid]}
        for norm, (pairs, iid) in CONTRASTS.items()
        if {pairs, iid} <= set(err.columns)
        for seed in err.index
        if pd.notna(err.at[seed, pairs]) and pd.notna(err.at[seed, iid])
    ]
    path = Path(out) / "renorm_noniid_contrasts.csv"
    pd.DataFrame(rows, columns=["seed", "norm", "pairs_arm", "iid_arm", "gap"]).to_csv(path, index=False)
    return [path]


def analyze(runs: pd.DataFrame, epochs: pd.DataFrame, out) -> list:
    done = completed(runs)
    written = accuracy_table(done, out) + contrasts(done, out)
    written += curves_figure(done, epochs, out)
    probe = probe_table(done, Path(out))
    written += [Path(out) / PROBE] + probe_summary(probe, out)
    written += dose_figure(done, probe, out)
    return written
