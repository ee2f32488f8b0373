"""C8 analysis: one row per way of doing BatchNorm (train, source- and target-domain error, what it is for)."""

from __future__ import annotations

import pandas as pd

from bnlab.results.figures import mean_of, new_figure, save_figure, say_bands
from bnlab.results.runs import completed
from bnlab.results.tables import aggregate, mean_std_cells, write_table

# (talk's axis, way, arm, metric suffix for the source/target columns, what it is for). Suffixes name eval modes:
# running = EMA statistics, batch = batch statistics in training mode, precise / adaptive = recomputed statistics.
WAYS = [
    ("test: which mu, sigma", "batch statistics (train mode)", "bn", "batch", "what training normalizes with"),
    ("test: which mu, sigma", "EMA statistics", "bn", "running", "the default at test time"),
    ("test: which mu, sigma", "Precise BN", "bn", "precise", "unbiased population statistics of the final model"),
    ("test: which mu, sigma", "Adaptive BN", "bn", "adaptive", "test on a shifted domain: its own statistics"),
    ("which mu, sigma", "Batch Renorm (NBS 4)", "brn", "running", "small or non-i.i.d. batches"),
    ("compute mu_B", "per-device BN = Ghost BN (4 x 4)", "per_device", "running", "NBS below the SGD batch"),
    ("compute mu_B", "Sync BN (4 processes x 4)", "sync", "running", "NBS above the per-device batch"),
    ("compute mu_B", "Virtual BN (4 + 12 reference)", "virtual", "running", "NBS above the batch, forward-only"),
    ("compute mu_B", "accumulated gradients (4 x 4)", "accumulate", "running", "SGD batch above the NBS"),
    ("update EMA", "yes (BN, NBS 16)", "bn", "running", "the default"),
    ("update EMA", "no: EMA never updated", "no_update", "running", "batches that must not enter the EMA (GAN)"),
    ("update EMA", "no, then Precise BN", "no_update", "precise", "statistics computed afterwards instead"),
    ("update EMA", "shared BN, mixed domains", "shared_mixed", "running", "one EMA over two domains"),
    ("update EMA", "Separate BN, mixed domains", "separate_mixed", "running", "multi-domain training"),
    ("fine-tune", "BN at batch 4", "finetune_bn", "running", "fine-tuning with BN kept"),
    ("fine-tune", "Frozen BN (source statistics)", "finetune_frozen", "running", "small-batch fine-tuning"),
    ("fine-tune", "Frozen BN (target statistics)", "finetune_adapted", "running", "Adaptive BN, then frozen"),
    ("reference", "GroupNorm (no batch statistics)", "group", "running", "batch-independent baseline"),
]
COLUMNS = {"train_err": "train err", "source_err": "source err", "target_err": "target err"}


def way_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per way present in `runs`: its arm's train error and its source/target errors under that way's
    statistics (mean and std over seeds)."""
    done = completed(runs)
    rows = []
    for order, (axis, way, arm, suffix, purpose) in enumerate(WAYS):
        arm_runs = done[done["arm"] == arm]
        if arm_runs.empty or f"val_err_{suffix}" not in arm_runs:
            continue
        for _, r in arm_runs.iterrows():
            rows.append(
                {
                    "order": order,
                    "question": axis,
                    "way": way,
                    "arm": arm,
                    "what it is for": purpose,
                    "train_err": r.get("train_err"),
                    "source_err": r.get(f"val_err_{suffix}"),
                    "target_err": r.get(f"target_err_{suffix}"),
                }
            )
    per_run = pd.DataFrame(rows)
    if per_run.empty:
        return per_run
    keys = ["order", "question", "way", "arm", "what it is for"]
    return aggregate(per_run, keys, list(COLUMNS)).sort_values("order").drop(columns="order")


def shift_text(runs: pd.DataFrame) -> str:
    first = runs.iloc[0]
    keys = ("contrast", "brightness", "noise_std")
    c, b, n = (first.get(f"domains.{k}") for k in keys)
    return f"x -> {c:g} x + {b:g} + N(0, {n:g}^2) on uint8 pixels"


def analyze(runs: pd.DataFrame, epochs: pd.DataFrame, out) -> list:
    agg = way_table(runs)
    if agg.empty:
        raise ValueError("no completed ten_ways run with the expected metrics")
    table = mean_std_cells(agg, list(COLUMNS)).rename(columns=COLUMNS)
    table = table[["question", "way", "arm", "n", *COLUMNS.values(), "what it is for"]]
    written = write_table(
        table,
        out,
        "ten_ways_table",
        f"Error (%), mean ± std over seeds. Source = the test images; target = the same images shifted "
        f"({shift_text(runs)}). Train err: batch statistics on the arm's own training data (target domain for "
        "the fine-tuning arms, both domains for the mixed-domain arms).",
    )
    fig, axes = new_figure(width=7.5, height=0.32 * len(agg) + 1.2)
    ax = axes[0][0]
    y = list(range(len(agg)))[::-1]
    h = 0.38
    ax.barh([v + h / 2 for v in y], agg["source_err_mean"] * 100, h, xerr=agg["source_err_std"] * 100, label="source")
    ax.barh([v - h / 2 for v in y], agg["target_err_mean"] * 100, h, xerr=agg["target_err_std"] * 100, label="target")
    ax.scatter(agg["train_err_mean"] * 100, y, marker="|", s=120, color="black", zorder=3, label="train")
    ax.set_yticks(y, [f"{w}  [{a}]" for w, a in zip(agg["way"], agg["arm"])])
    title = f"Ten ways to do BatchNorm: source- and target-domain error, {mean_of(agg['n'])}"
    ax.set(xlabel="error (%)", title=title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    say_bands(fig, "bars (source, target)", n_in="the title (every arm)" if agg["n"].nunique() == 1 else "the table")
    written += save_figure(fig, out, "ten_ways_errors")
    return written
