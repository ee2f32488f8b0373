"""C2 analysis: final accuracy of BN / BRN at NBS 2, 4, 32, the recovery fraction with a bootstrap CI over seeds,
and accuracy-vs-step curves drawn with Precise BN (free of EMA lag)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from bnlab.results.claim_tests import mean_ci
from bnlab.results.figures import errorbar_lines, mean_curves, mean_of, new_figure, save_figure, say_bands
from bnlab.results.runs import completed
from bnlab.results.tables import aggregate, mean_std_cells, write_table

# Ioffe 2017, sec. 4.2 (Inception v3, ImageNet, top-1 %): arm -> (accuracy, at step)
SOURCE = {
    "BN, NBS 32": "78.3 (130k steps)",
    "BN, NBS 4": "74.2 (210k steps)",
    "BRN, NBS 4": "76.5 (130k steps)",
    "BRN, NBS 32": "78.5 (extra arm)",
}
# the paper's recovery fraction (BRN_4 - BN_4) / (BN_32 - BN_4); BN_4 is its 210k-step number
SOURCE_RECOVERY = (76.5 - 74.2) / (78.3 - 74.2)
MODES = {"running": "EMA", "precise": "Precise BN", "batch": "batch statistics"}


def arm_label(df: pd.DataFrame) -> pd.Series:
    name = df["norm.name"].map({"batch": "BN", "renorm": "BRN"})
    return name + ", NBS " + df["nbs"].astype(str)


def schedule_steps(runs: pd.DataFrame) -> tuple[int, int, int] | None:
    """BRN's warm-up end, d_max-full and r_max-full steps (the config may give them in EMA time constants)."""
    brn = runs[runs["norm.name"] == "renorm"]
    if brn.empty:
        return None
    row = brn.iloc[0]
    scale = 1.0 / row["norm.momentum"] if row.get("norm.schedule_unit") == "ema_tau" else 1.0
    return tuple(round(row[f"norm.{k}"] * scale) for k in ("warmup_steps", "d_max_full_at", "r_max_full_at"))


def fieller(g: np.ndarray, loss: np.ndarray, alpha: float = 0.05) -> tuple[float, float] | None:
    """Fieller's (1 - alpha) interval for mean(g) / mean(loss) from paired per-seed values; None when the loss's
    own interval reaches 0 (the interval is then unbounded: a fraction of nothing)."""
    n = len(g)
    t2 = scipy_stats.t.ppf(1 - alpha / 2, n - 1) ** 2
    cov = np.cov(np.stack([g, loss]), ddof=1) / n
    a = loss.mean() ** 2 - t2 * cov[1, 1]
    b = -2 * (g.mean() * loss.mean() - t2 * cov[0, 1])
    c = g.mean() ** 2 - t2 * cov[0, 0]
    disc = b * b - 4 * a * c
    if a <= 0 or disc < 0:
        return None
    roots = sorted(((-b - np.sqrt(disc)) / (2 * a), (-b + np.sqrt(disc)) / (2 * a)))
    return roots[0], roots[1]


def recovery(done: pd.DataFrame, metric: str, k: int) -> dict:
    """(BRN_k - BN_k) / (BN_32 - BN_k) on seed means, seeds paired across arms (a seed's runs share initialization
    and batch order): loss and gain with paired t 95% CIs and p, the fraction with Fieller's interval."""
    wide = done.pivot_table(index="seed", columns="arm", values=metric)
    cols = [f"BN, NBS {k}", f"BRN, NBS {k}", "BN, NBS 32"]
    if any(c not in wide for c in cols):
        return {}
    wide = wide[cols].dropna() * 100
    if len(wide) < 2:
        return {}
    bn_k, brn_k, bn_32 = (wide[c].to_numpy() for c in cols)
    gain_d, loss_d = brn_k - bn_k, bn_32 - bn_k
    loss, llo, lhi, lp = mean_ci(loss_d)
    gain, glo, ghi, gp = mean_ci(gain_d)
    interval = fieller(gain_d, loss_d)
    return {
        "nbs": k,
        "statistics": MODES[metric.removeprefix("test_acc_")],
        "seeds": len(wide),
        "BN_k": bn_k.mean(),
        "BRN_k": brn_k.mean(),
        "BN_32": bn_32.mean(),
        "loss BN_32 - BN_k": loss,
        "loss 95% CI": f"[{llo:.1f}, {lhi:.1f}]",
        "loss p": lp,
        "gain BRN_k - BN_k": gain,
        "gain 95% CI": f"[{glo:.1f}, {ghi:.1f}]",
        "gain p": gp,
        "recovery": gain / loss if interval else float("nan"),
        "recovery 95% CI": f"[{interval[0]:.0%}, {interval[1]:.0%}]" if interval else "undefined: loss CI reaches 0",
        "paper": f"{SOURCE_RECOVERY:.0%} (NBS 4)",
    }


def accuracy_table(done: pd.DataFrame, out) -> list:
    metrics = [m for m in (*(f"test_acc_{m}" for m in MODES), "train_acc") if m in done]
    agg = aggregate(done, ["arm", "norm.name", "nbs"], metrics).sort_values(["nbs", "norm.name"])
    table = mean_std_cells(agg, metrics).drop(columns=["norm.name", "nbs"])
    table["source top-1 (Inception v3 / ImageNet)"] = table["arm"].map(SOURCE).fillna("")
    table = table.rename(columns={**{f"test_acc_{m}": f"test acc, {label}" for m, label in MODES.items()},
                                  "train_acc": "train acc (batch stats, during training)"})  # fmt: skip
    micro = " or ".join(str(k) for k in sorted(done["nbs"].unique()) if k < 32)
    return write_table(
        table,
        out,
        "renorm_small_table",
        f"Final accuracy (%), mean ± std over seeds; SGD batch 32, normalization over micro-batches of {micro} or "
        "the whole batch (NBS 32).",
    )


def recovery_table(done: pd.DataFrame, out) -> list:
    rows = [
        recovery(done, m, k)
        for m in ("test_acc_running", "test_acc_precise")
        if m in done
        for k in sorted(n for n in done["nbs"].unique() if n < 32)
    ]
    rec = pd.DataFrame([r for r in rows if r])
    if rec.empty:
        return []
    for c in ("BN_k", "BRN_k", "BN_32", "loss BN_32 - BN_k", "gain BRN_k - BN_k"):
        rec[c] = rec[c].map(lambda v: f"{v:.1f}")
    for c in ("loss p", "gain p"):
        rec[c] = rec[c].map(lambda v: f"{v:.2g}")
    rec["recovery"] = rec["recovery"].map(lambda v: "–" if v != v else f"{v:.0%}")
    return write_table(
        rec,
        out,
        "renorm_small_recovery",
        "Recovery fraction (BRN_k - BN_k) / (BN_32 - BN_k) of final test accuracy (%), seeds paired across arms; "
        "loss and gain with 95% CIs from the t distribution over seeds and two-sided p; the fraction with "
        "Fieller's 95% interval, left undefined where the loss's CI reaches 0. Paper: (76.5 - 74.2) / "
        "(78.3 - 74.2). Exploratory below 5 seeds (experiments/renorm_small/claim.yaml).",
    )


def curves_figure(done: pd.DataFrame, epochs: pd.DataFrame, out) -> list:
    curve_mode = next((m for m in ("precise", "batch") if f"val_err_{m}" in epochs), "running")
    curves = epochs.join(done.set_index("run_id")[["arm", "nbs", "norm.name"]], on="run_id", how="inner")
    curves["acc"] = 1 - curves[f"val_err_{curve_mode}"]
    sched = schedule_steps(done)
    nbs_values = sorted(done["nbs"].unique())
    fig, axes = new_figure(ncols=len(nbs_values) + 1, width=3.6 * (len(nbs_values) + 1), height=3.4)
    means = curves.groupby(["arm", "step"])["acc"].mean()  # the whole run, from the first evaluation
    low = (means.min() * 100 - 1) if len(means) else None
    for ax, k in zip(axes[0], nbs_values):
        sub = curves[curves["nbs"] == k]
        mean_curves(ax, sub, "step", "acc", "norm.name", label_fmt="{}")
        for line, name in zip(ax.get_lines(), sorted(sub["norm.name"].unique())):
            alpha = done.loc[done["norm.name"] == name, "norm.momentum"].iloc[0]
            line.set_label(f"{ {'batch': 'BN', 'renorm': 'BRN'}[name] } (EMA rate {alpha:g})")
        if sched:
            for s, lab in zip(sched, ("BRN warm-up ends", "d_max = 5", "r_max = 3")):
                ax.axvline(s, color="grey", lw=0.8, ls=":")
                ax.text(s, 1.0, f" {lab}", transform=ax.get_xaxis_transform(), fontsize=6, rotation=90, va="top")
        ax.set(xlabel="training step", title=f"NBS {k}")
        if low is not None:
            ax.set_ylim(bottom=low)
    axes[0][0].set_ylabel(f"test accuracy (%), {MODES[curve_mode]}")
    axes[0][0].legend(loc="lower right")
    ax = axes[0][-1]
    final = aggregate(done, ["norm.name", "nbs"], ["test_acc_running"])
    final["norm"] = final["norm.name"].map({"batch": "BN", "renorm": "BRN"})
    errorbar_lines(ax, final, "nbs", "test_acc_running", hue="norm")
    ax.set_xscale("log", base=2)
    ax.set_xticks(nbs_values, [str(n) for n in nbs_values])
    ax.set(
        xlabel="normalization batch size",
        ylabel="final test accuracy (%), EMA",
        title=f"end of training, {mean_of(final['n'])}",
    )
    ax.legend()
    say_bands(fig, "bands and bars")
    return save_figure(fig, out, "renorm_small_accuracy_vs_step")


def analyze(runs: pd.DataFrame, epochs: pd.DataFrame, out) -> list:
    done = completed(runs)
    done["nbs"] = done["norm.nbs"].fillna(done["train.batch_size"]).astype(int)
    done["arm"] = arm_label(done)
    for mode in MODES:
        if f"val_err_{mode}" in done:
            done[f"test_acc_{mode}"] = 1 - done[f"val_err_{mode}"]
    done["train_acc"] = 1 - done["train_err"]
    return accuracy_table(done, out) + recovery_table(done, out) + curves_figure(done, epochs, out)
