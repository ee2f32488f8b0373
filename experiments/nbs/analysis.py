"""C1 analysis: the NBS table (train/val error vs normalization batch size), 95% confidence intervals, Welch
t-tests of the U shape (is the minimum below NBS 2 and below the largest NBS?) and the error-vs-NBS figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from bnlab.results.figures import errorbar_lines, mean_of, new_figure, save_figure, say_bands
from bnlab.results.runs import completed
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
    done = completed(runs)
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
    if not single.empty:  # (an nbs_sync sweep alone has only Sync BN runs)
        written += u_shape_tests(single, [m for m in ("val_err_running", "val_err_precise") if m in single], out)
    if (processes > 1).any():
        written += sync_vs_one_process(done, processes, metrics, out)
    fig, axes = new_figure(ncols=2, width=9.5)
    ax = axes[0][0]
    for m in metrics if not single.empty else []:
        errorbar_lines(ax, agg, "nbs", m, label_fmt=LABELS[m])
    synced = aggregate(done[processes > 1], ["nbs"], metrics) if (processes > 1).any() else None
    if synced is not None:  # the Sync BN arm: same NBS reached across processes, open markers in the metric's
        # colour, set a little to the right of the one-process point they compare with (else one hides the other)
        ranks = int(processes.max())
        for i, m in enumerate(metrics):
            ax.errorbar(
                synced["nbs"] * 2**0.15,
                synced[f"{m}_mean"] * 100,
                yerr=synced[f"{m}_std"] * 100,
                fmt="D",
                mfc="white",
                color=f"C{i}",
                capsize=3,
                label=f"Sync BN, {ranks} processes (open; n = {int(synced['n'].min())})" if i == 0 else None,
            )
    ax.set_xscale("log", base=2)
    one_nbs = done["nbs"].nunique() == 1  # the Sync BN arm alone: one-process and Sync points side by side
    if one_nbs:  # at the right, the legend to their left
        ax.set_xlim(done["nbs"].iloc[0] * 2**-2.8, done["nbs"].iloc[0] * 2**0.5)
    ax.set(xlabel="normalization batch size (NBS)", ylabel="error (%)", title=f"bnlab, {mean_of(agg['n'])}")
    ax.legend(loc="center left" if one_nbs else "best")
    src = pd.DataFrame([(n, t, v) for n, (t, v) in SOURCE.items()], columns=["nbs", "train", "val"])
    ax = axes[0][1]
    ax.plot(src.nbs, src.train, "o-", label="train")
    ax.plot(src.nbs, src.val, "s-", label="val")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="NBS", ylabel="error (%)", title="source: ResNet-50 / ImageNet (slide)")
    ax.legend()
    say_bands(fig, "bars")
    written += save_figure(fig, out, "nbs_error_vs_nbs")
    return written


def ci95(x: np.ndarray) -> tuple[float, float]:
    """Student-t 95% interval of the mean over seeds."""
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else float("nan")
    return x.mean() - half, x.mean() + half


def u_shape_tests(single: pd.DataFrame, metrics: list[str], out) -> list:
    """Per NBS: mean val error with a 95% t-interval over seeds. The U: Welch's two-sided t-test (unequal variances,
    seeds as samples) of the NBS with the lowest mean against the smallest and against the largest NBS. The
    minimum is picked from the same data, so its p-values are optimistic; NBS 32 (the slide's flat bottom) is
    also tested as a comparison fixed in advance."""
    rows = []
    for m in metrics:
        by = {n: g[m].to_numpy() * 100 for n, g in single.groupby("nbs")}
        ends = (min(by), max(by))
        best = min(by, key=lambda n: by[n].mean())
        for n, x in sorted(by.items()):
            lo, hi = ci95(x)
            rows.append(
                {"metric": LABELS[m], "nbs": n, "n": len(x), "mean": x.mean(), "95% CI": f"[{lo:.2f}, {hi:.2f}]"}
            )
        for mid, how in (
            (best, "lowest mean (post hoc; = NBS 32)" if best == 32 else "lowest mean (post hoc)"),
            (32, "NBS 32 (fixed in advance)"),
        ):
            if mid not in by or (mid == 32 and best == 32 and how.startswith("NBS")):
                continue
            for end in ends:
                if end == mid:
                    continue
                t = stats.ttest_ind(by[end], by[mid], equal_var=False)
                rows.append(
                    {
                        "metric": LABELS[m],
                        "nbs": f"{end} vs {mid}",
                        "n": f"{len(by[end])} / {len(by[mid])}",
                        "mean": by[end].mean() - by[mid].mean(),
                        "test": how,
                        "Welch t": t.statistic,
                        "p (two-sided)": t.pvalue,
                    }
                )
    table = pd.DataFrame(rows)
    table["mean"] = table["mean"].map(lambda v: f"{v:.2f}")
    table = table.fillna({"95% CI": "", "test": ""})
    for c, fmt in (("Welch t", "{:.2f}"), ("p (two-sided)", "{:.3g}")):
        if c in table:
            table[c] = table[c].map(lambda v, fmt=fmt: "" if v != v else fmt.format(v))
    return write_table(
        table,
        out,
        "nbs_u_test",
        "Validation error (%) per NBS: mean and 95% t-interval over seeds; rows 'a vs b': error at NBS a minus "
        "error at NBS b, Welch's two-sided t-test over seeds.",
    )


def sync_vs_one_process(done: pd.DataFrame, processes: pd.Series, metrics: list[str], out) -> list:
    """At each NBS the Sync BN arm reaches: Sync BN across processes minus one process with the same NBS, with
    Welch's two-sided t-test over seeds (the same statistics should give the same errors up to seed noise)."""
    rows = []
    for n in sorted(set(done.loc[processes > 1, "nbs"])):
        sync, one = done[(processes > 1) & (done["nbs"] == n)], done[(processes == 1) & (done["nbs"] == n)]
        for m in metrics:
            a, b = sync[m].to_numpy() * 100, one[m].to_numpy() * 100
            t = stats.ttest_ind(a, b, equal_var=False) if min(len(a), len(b)) > 1 else None
            rows.append(
                {
                    "nbs": n,
                    "metric": LABELS[m],
                    "n sync / one": f"{len(a)} / {len(b)}",
                    "sync": f"{a.mean():.2f}" if len(a) else "",
                    "one process": f"{b.mean():.2f}" if len(b) else "",
                    "sync - one": f"{a.mean() - b.mean():.2f}" if len(a) and len(b) else "",
                    "Welch t": f"{t.statistic:.2f}" if t is not None else "",
                    "p (two-sided)": f"{t.pvalue:.3g}" if t is not None else "",
                }
            )
    return write_table(
        pd.DataFrame(rows),
        out,
        "nbs_sync_test",
        "Sync BN (the NBS reached across processes) against one process with the same NBS: error (%), mean over "
        "seeds, and Welch's two-sided t-test over seeds.",
    )


def verdict_numbers(agg: pd.DataFrame) -> dict:
    """Shape checks the README reports: is train error monotone in NBS, where is the val minimum."""
    a = agg.sort_values("nbs")
    return {
        "train_err_monotone_decreasing": bool(np.all(np.diff(a["train_err_mean"]) <= 0.002)),
        "val_err_running_argmin_nbs": int(a.loc[a["val_err_running_mean"].idxmin(), "nbs"]),
    }
