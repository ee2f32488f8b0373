"""C4 analysis in the thread's terms: per arm and seed, the three loss curves of the forum's figure (train loss,
eval-mode val loss, train-mode val loss) with the lr; the last BN layer's smallest running_var on a log axis
(float32's denormal range marked); and a table per arm with the BN health monitor's events by cause, the smallest
running_var, the largest eval-minus-train gap, the gap at the end (healed or not) and final metrics."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd

from bnlab.health_events import EVENTS
from bnlab.results.figures import new_figure, save_figure
from bnlab.results.runs import arm_order, completed, measured_on
from bnlab.results.tables import mean_std_text, write_table

ARM_ORDER = ["bn_high_lr", "bn_low_lr", "bn_eps0.1", "groupnorm", "brn"]
ARM_LABELS = {
    "bn_high_lr": "BN, high lr",
    "bn_low_lr": "BN, low lr",
    "bn_eps0.1": "BN eps 0.1, high lr",
    "groupnorm": "GroupNorm, high lr",
    "brn": "BRN, high lr",
}
CURVES = {  # the thread's colours: blue train, red val (eval mode); ours adds the train-mode val loss
    "train_loss": ("train loss", "tab:blue", "-"),
    "val_loss_running": ("val loss, eval mode (EMA)", "tab:red", "-"),
    "val_loss_batch": ("val loss, train mode (batch stats)", "tab:green", "--"),
    "val_loss_precise": ("val loss, Precise BN (no EMA lag)", "tab:purple", ":"),
}
CAUSES = {**EVENTS, "batch_composition": "batch comp."}  # the monitor's event names (one list), shortened for the table
FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # 1.18e-38: below it float32 is denormal
FIXED_POINT = 4 * 2.0**-149  # 5.6e-45: PyTorch's EMA at momentum 0.1 stops here (0.9 x 4 x 2^-149 rounds to itself)
FLOOR = 1e-46  # where an exact 0 is drawn on the log axis


def _events(cell) -> list[dict]:
    if isinstance(cell, str):
        return ast.literal_eval(cell) if cell.startswith("[") else []
    if cell is None or isinstance(cell, float):  # missing
        return []
    return [dict(e) for e in cell]  # a list, or the array parquet gives back


def _arm_order(arms) -> list[str]:
    return arm_order(arms, ARM_ORDER)


def _fmt(values: pd.Series, digits: int = 3) -> str:
    v = values.dropna()
    return mean_std_text(v.mean(), v.std(ddof=1), len(v), digits) if len(v) else "–"


def _event_cell(runs: pd.DataFrame) -> str:
    """'collapsed variance 2/2 (first ep 9, 11; e.g. blocks.6.norm_dw ch [3, 17])' per cause seen."""
    parts = []
    for kind, label in CAUSES.items():
        hits = []
        for _, r in runs.iterrows():
            mine = [e for e in _events(r.get("events")) if e.get("event") == kind]
            if mine:
                hits.append(mine)
        if not hits:
            continue
        first = ", ".join(str(m[0]["epoch"]) for m in hits)
        last = hits[0][-1]["layers"][0]
        parts.append(
            f"{label} {len(hits)}/{len(runs)} (first ep {first}; {sum(len(m) for m in hits)} checks; "
            f"e.g. {last['layer']} ch {[int(c) for c in last['channels'][:6]]})"
        )
    return "; ".join(parts) or "none"


RVCOL = "health/last_bn_running_var_min"


def arm_table(done: pd.DataFrame, e: pd.DataFrame, arms: list[str], out) -> list:
    rvcol = RVCOL
    rows = []
    for arm in arms:
        d, c = done[done["arm"] == arm], e[e["arm"] == arm]
        per_run = c.groupby("run_id")
        last = c.loc[per_run["epoch"].idxmax()]
        rv = c[rvcol].dropna() if rvcol in c else pd.Series(dtype=float)
        row = {
            "arm": ARM_LABELS.get(arm, arm),
            "runs": len(d),
            "BN health events (runs, cause, first epoch)": _event_cell(d),
            "min running_var, last BN": f"{rv.min():.3g}" if len(rv) else "- (no running stats)",
            "max eval - train val loss after epoch 2": f"{c[c['epoch'] > 2]['gap'].max():.3f}",
            "final eval - train val loss": _fmt(last["gap"]),
            "final lr": f"{last['lr'].mean():.2g}",
        }
        for m, label in (
            ("train_loss", "final train loss"),
            ("val_loss_running", "final val loss, EMA"),
            ("val_loss_batch", "final val loss, batch"),
            ("val_loss_precise", "final val loss, Precise BN"),
            ("val_err_running", "final val err, EMA"),
            ("val_err_precise", "final val err, Precise BN"),
        ):
            if m in d:
                row[label] = _fmt(d[m])
        rows.append(row)
    return write_table(
        pd.DataFrame(rows),
        out,
        "forum_table",
        "Forum instability per arm (mean ± std over seeds): the BN health monitor's events by cause (runs with one, "
        "the epoch of each run's first, checks flagged, one named layer and its channels), the smallest running_var "
        "of the last BN layer, the largest eval-mode minus train-mode validation loss after 'epoch' 2 (the EMA's "
        "start-up excluded) and the final one, final lr and final metrics.",
    )


def losses_figure(done: pd.DataFrame, e: pd.DataFrame, arms: list[str], out) -> list:
    seeds = sorted(e["seed"].unique())
    bpe = done["train.batches_per_epoch"].dropna()
    xlabel = f'"epoch" ({int(bpe.iloc[0])} batches)' if len(bpe) else '"epoch"'
    fig, axes = new_figure(ncols=len(arms), nrows=len(seeds), width=3.3 * len(arms), height=2.6 * len(seeds))
    curves = [c for c in CURVES if c in e]
    lo = np.nanpercentile(e[curves].to_numpy(), 1)
    hi = max(np.nanpercentile(e[curves].to_numpy(), 99.5), lo + 0.2)
    for j, arm in enumerate(arms):
        for i, seed in enumerate(seeds):
            ax = axes[i][j]
            c = e[(e["arm"] == arm) & (e["seed"] == seed)]
            if c.empty:
                ax.set_axis_off()
                ax.text(
                    0.5,
                    0.5,
                    f"{ARM_LABELS.get(arm, arm)}, seed {seed}: not finished",
                    ha="center",
                    fontsize=8,
                    transform=ax.transAxes,
                )
                continue
            for metric, (label, color, ls) in CURVES.items():
                if metric not in c:
                    continue
                ax.plot(c["epoch"], c[metric], color=color, ls=ls, lw=1.2, label=label)
            ax.set_ylim(lo - 0.05, hi + 0.05)
            clipped = c[c["val_loss_running"] > hi + 0.05]
            ax.plot(clipped["epoch"], [hi + 0.05] * len(clipped), "^", color="tab:red", ms=5, clip_on=False)
            for x in c["epoch"][c["lr"].diff() < 0]:  # the plateau scheduler's decays (lr x 0.2)
                ax.axvline(x - 0.5, color="0.5", lw=0.8, ls=":")
                ax.text(x - 0.3, hi, "lr x0.2", fontsize=6, color="0.4", va="top")
            ax.set_title(f"{ARM_LABELS.get(arm, arm)}, seed {seed}", fontsize=8)
            if i == len(seeds) - 1:
                ax.set_xlabel(xlabel)
            if j == 0:
                ax.set_ylabel("BCE - soft F1")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, bbox_to_anchor=(0.5, -0.01))
    rows = len(seeds)  # margins in inches, whatever the number of seed rows
    fig.subplots_adjust(
        left=0.06, right=0.95, bottom=0.7 / (2.6 * rows), top=1 - 0.35 / (2.6 * rows), wspace=0.45, hspace=0.35
    )
    return save_figure(fig, out, "forum_losses")


def running_var_figure(done: pd.DataFrame, e: pd.DataFrame, arms: list[str], out) -> list:
    seeds, rvcol = sorted(e["seed"].unique()), RVCOL
    bpe = done["train.batches_per_epoch"].dropna()
    xlabel = f'"epoch" ({int(bpe.iloc[0])} batches)' if len(bpe) else '"epoch"'
    written = []
    if rvcol in e:
        fig, axes = new_figure(width=7.5, height=4.2)
        ax = axes[0][0]
        ax.axhspan(FLOOR, FLOAT32_TINY, color="0.9", zorder=0)
        right = ax.get_yaxis_transform()  # x in axes fraction, y in data
        ax.text(
            0.99,
            1e-39,
            "float32 denormal range (< 1.18e-38)",
            fontsize=8,
            color="0.4",
            ha="right",
            va="top",
            transform=right,
        )
        ax.axhline(FIXED_POINT, color="0.5", lw=0.8, ls=":")
        ax.text(
            0.99,
            FIXED_POINT * 4,
            "5.6e-45 = 4 x 2**-149, the EMA fixed point",
            fontsize=7,
            color="0.4",
            ha="right",
            transform=right,
        )
        colors = dict(zip(arms, ["tab:red", "tab:blue", "tab:orange", "tab:green", "tab:purple"], strict=False))
        for arm in arms:
            for k, seed in enumerate(seeds):
                c = e[(e["arm"] == arm) & (e["seed"] == seed)].dropna(subset=[rvcol])
                if c.empty:
                    continue
                ax.plot(
                    c["epoch"],
                    c[rvcol].clip(lower=FLOOR),
                    color=colors.get(arm),
                    ls=["-", "--", ":"][k % 3],
                    label=ARM_LABELS.get(arm, arm) if k == 0 else None,
                )
        ax.set_yscale("log")
        ax.set_ylim(FLOOR / 3, 10)
        ax.set(
            xlabel=xlabel,
            ylabel="min running_var, last BN layer",
            title="Last BN layer's smallest running_var (seeds: line styles; GroupNorm has none)",
        )
        ax.legend(fontsize=8, loc="upper right")
        written += save_figure(fig, out, "forum_last_bn_running_var")
    return written


# ------------------------------------------------- train/inference consistency of every trained model (post hoc)
CONSISTENCY, SWAPS = "forum_consistency.csv", "forum_layer_swap.csv"
RATIO_BATCHES = 50  # training batches over which E_B[1 / sigma_B] is averaged


def consistency_of_run(run_dir: Path) -> tuple[dict, list[dict]]:
    """One trained run: eval-mode, Precise-BN and training-mode val loss, the classifier input's moments in both
    modes, the per-channel scale ratio E_B[1/sigma_B] * sigma_run, and the one-layer Precise-BN swaps."""
    import copy

    import torch

    from bnlab.diagnostics.consistency import head_moments, layer_swap, scale_ratio
    from bnlab.norm import precise_bn
    from bnlab.train.evaluate import evaluate
    from bnlab.train.trained import load_run

    cfg, job = load_run(run_dir)
    model, data, loss_fn = job.model, job.data, job.loss_fn
    row = {f"val_loss_{m}_end": evaluate(model, data.val, loss_fn, m)["loss"] for m in ("running", "batch")}
    for m, key in ((True, "train"), (False, "eval")):
        row.update({f"head_{k}_{key}": v for k, v in head_moments(model, data.val, train=m).items()})
    ratios = scale_ratio(model, data.train, RATIO_BATCHES)
    if not ratios:  # no running statistics (GroupNorm): nothing to swap
        return row, []
    allr = torch.cat(list(ratios.values()))
    row.update(ratio_median=allr.median().item(), ratio_max=allr.max().item(),
               ratio_frac_above_1_5=(allr > 1.5).float().mean().item())  # fmt: skip
    precise = copy.deepcopy(model)
    data.train.set_epoch(1)
    precise_bn(precise, data.train, int(cfg.eval.precise_samples))
    swaps = layer_swap(model, precise, data.val, loss_fn)
    base = swaps[0]["loss"]
    for s in swaps:
        s["delta"] = s["loss"] - base  # < 0: this layer's running statistics carry part of the eval-mode gap
        s["ratio_median"] = ratios[s["layer"]].median().item() if s["layer"] in ratios else float("nan")
    row["val_loss_precise_end"] = swaps[1]["loss"]
    return row, swaps


def consistency_tables(done: pd.DataFrame, out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Measured once per set of runs and cached beside the collected tables (run directories are needed then)."""
    paths = Path(out) / CONSISTENCY, Path(out) / SWAPS
    if paths[0].exists() and paths[1].exists():
        cached = pd.read_csv(paths[0])
        if measured_on(done, cached):
            return cached, pd.read_csv(paths[1])
    rows, swaps = [], []
    for _, run in done.iterrows():
        ids = {"run_id": run["run_id"], "arm": run["arm"], "seed": int(run["seed"])}
        row, swap = consistency_of_run(Path(run["run_dir"]))
        rows.append({**ids, **row})
        swaps += [{**ids, **s} for s in swap]
        print(f"[forum] consistency of {run['run_id']} ({run['arm']}, seed {run['seed']}) measured", flush=True)
    table, swap_table = pd.DataFrame(rows), pd.DataFrame(swaps)
    table.to_csv(paths[0], index=False)
    swap_table.to_csv(paths[1], index=False)
    return table, swap_table


def consistency_summary(table: pd.DataFrame, swaps: pd.DataFrame, arms: list[str], out) -> list:
    cols = {
        "val_loss_running_end": "val loss, eval mode (EMA)",
        "val_loss_precise_end": "val loss, Precise BN",
        "val_loss_batch_end": "val loss, training mode",
        "head_mean_train": "head input mean, training mode",
        "head_mean_eval": "head input mean, eval mode",
        "head_var_train": "head input var, training mode",
        "head_var_eval": "head input var, eval mode",
        "ratio_median": "E[1/sigma_B] sigma_run, median channel",
        "ratio_max": "... largest channel",
        "ratio_frac_above_1_5": "share of channels > 1.5",
    }
    rows = []
    for arm in arms:
        t = table[table["arm"] == arm]
        row = {"arm": ARM_LABELS.get(arm, arm), "runs": len(t)}
        row.update({label: _fmt(t[c]) for c, label in cols.items() if c in t})
        s = swaps[(swaps["arm"] == arm) & ~swaps["layer"].isin(["(none)", "(all)"])] if len(swaps) else swaps
        if len(s):
            best = s.loc[s.groupby("run_id")["delta"].idxmin()]
            row["layer whose Precise-BN swap lowers eval loss most (runs)"] = ", ".join(
                f"{k} ({v})" for k, v in best["layer"].value_counts().items()
            )
            row["its loss change"] = _fmt(best["delta"])
        rows.append(row)
    return write_table(
        pd.DataFrame(rows).fillna("–"),
        out,
        "forum_consistency_table",
        "Train/inference consistency of the trained models (end of training, mean ± std over seeds): validation "
        "loss with running (EMA), Precise-BN and batch statistics; the classifier input's mean and variance in "
        "training and eval mode (the thread's features); the per-channel ratio E_B[1/sigma_B] * sigma_run over "
        f"{RATIO_BATCHES} training batches (> 1: the channel is smaller in eval mode than in training); and the BN "
        "layer whose running statistics, replaced by Precise BN's alone, lower the eval-mode loss most.",
    )


GAP_TABLE = "forum_gap_per_run.csv"
START_UP = 0.1  # the first 10% of steps are the EMA's start-up (C5's lag), not the thread's mid-training jump


def gap_per_run(e: pd.DataFrame, out) -> list:
    """Per run, the largest eval-minus-train-mode val loss after the start-up and the last one: C4a/C4b's metric
    (experiments/forum_instability/claim.yaml), one row per run for the declared tests."""
    rows = []
    for run_id, c in e.groupby("run_id"):
        late = c[c["step"] > START_UP * c["step"].max()]
        rows.append(
            {
                "run_id": run_id,
                "arm": c["arm"].iloc[0],
                "seed": c["seed"].iloc[0],
                "status": "completed",
                "max_gap": late["gap"].max(),
                "max_gap_epoch": int(late.loc[late["gap"].idxmax(), "epoch"]),
                "final_gap": c.loc[c["epoch"].idxmax(), "gap"],
            }
        )
    path = Path(out) / GAP_TABLE
    pd.DataFrame(rows).sort_values(["arm", "seed"]).to_csv(path, index=False)
    return [path]


def analyze(runs: pd.DataFrame, epochs: pd.DataFrame, out) -> list:
    done = completed(runs, "diverged")
    arms = _arm_order(done["arm"])
    e = epochs.join(done.set_index("run_id")[["arm", "seed"]], on="run_id", how="inner").sort_values("epoch")
    e["gap"] = e["val_loss_running"] - e["val_loss_batch"]
    written = arm_table(done, e, arms, out)
    written += gap_per_run(e, out)
    written += losses_figure(done, e, arms, out)
    written += running_var_figure(done, e, arms, out)
    table, swaps = consistency_tables(completed(done), Path(out))
    written += [Path(out) / CONSISTENCY, Path(out) / SWAPS]
    written += consistency_summary(table, swaps, arms, out)
    return written
