"""C7 (second part) analysis: the Hessian's top eigenvalues with BN, without BN and with BN frozen after training,
and how much of each leading eigenvector lies in the span of the gradients of the output channels' moments.

For every completed run this loads its checkpoint and config (run directories must exist), measures the nets
(`bn` runs give two: BN with batch statistics, and the same weights with BN frozen at Precise-BN statistics; `no_bn`
runs one) with bnlab.diagnostics.hessian, and caches the numbers in hessian_spectra.csv and hessian_nets.csv beside
the collected tables; later calls only redraw, unless the collected runs are not the ones measured.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from bnlab.diagnostics.hessian import (
    HessianOperator,
    ProjectedOperator,
    orthonormal_basis,
    output_moment_gradients,
    subspace_fraction,
    top_eigenpairs,
)
from bnlab.norm.modes import preserved_buffers
from bnlab.results.figures import new_figure, save_figure
from bnlab.results.runs import arm_order, completed
from bnlab.results.tables import write_table

NET_ORDER = ["bn", "frozen_bn", "no_bn"]
LABELS = {"bn": "batch norm", "frozen_bn": "frozen batch norm", "no_bn": "no batch norm"}
SPECTRA, NETS = "hessian_spectra.csv", "hessian_nets.csv"


def nets_of_run(run_dir: Path):
    """Yield (net name, model in the mode it is measured in, loss_fn, fixed batches, config) for one run."""
    from bnlab.norm import freeze_batchnorm, precise_bn
    from bnlab.train.trained import load_run

    cfg, job = load_run(run_dir, device=None)  # config, data, model (trained weights), loss, on the run's device
    data, model, loss_fn = job.data, job.model, job.loss_fn
    data.train.set_epoch(0)
    batches = []
    for x, y in data.train:  # the first batches of the run's (seeded) first epoch, fixed from here on
        batches.append((x, y))
        if len(batches) == int(cfg.hessian.batches):
            break
    model.train()  # BN normalizes each fixed batch by its own statistics, as in training
    if cfg.norm.name == "none":
        yield "no_bn", model, loss_fn, batches, cfg
        return
    yield "bn", model, loss_fn, batches, cfg
    data.train.set_epoch(1)
    precise_bn(model, data.train, int(cfg.hessian.precise_samples))  # population statistics of the trained net
    # the same parameters (affine included) with each BN now a constant affine: the post's "frozen batch norm" net
    yield "frozen_bn", freeze_batchnorm(model, trainable_affine=True), loss_fn, batches, cfg


def measure(net: str, model, loss_fn, batches, cfg) -> tuple[dict, pd.DataFrame]:
    hc = cfg.hessian
    t0 = time.time()
    op = HessianOperator(model, loss_fn, batches)
    loss, grad = op.loss_and_grad()
    with torch.no_grad(), preserved_buffers(model):
        acc = np.mean([(model(x).argmax(1) == y).float().mean().item() for x, y in batches])
    vals, vecs = top_eigenpairs(op, int(hc.top_k), tol=float(hc.tol))
    moments = output_moment_gradients(model, batches)
    mean_basis = moments["mean"]
    all_basis = torch.cat([moments["mean"], moments["variance"], moments["skew"]], 1)
    projected = ProjectedOperator(op, all_basis)
    pvals, _ = top_eigenpairs(projected, int(hc.projected_top_k), tol=float(hc.tol))
    params = torch.cat([p.detach().reshape(-1) for p in op.params])
    spectrum = pd.DataFrame(
        {
            "net": net,
            "index": np.arange(1, len(vals) + 1),
            "eigenvalue": vals.numpy(),
            "frac_means": subspace_fraction(vecs, mean_basis).cpu().numpy(),
            "frac_moments": subspace_fraction(vecs, all_basis).cpu().numpy(),
            "projected_eigenvalue": np.pad(pvals.numpy(), (0, len(vals) - len(pvals)), constant_values=np.nan),
        }
    )
    summary = {
        "net": net,
        "n_params": op.n,
        "param_norm": params.norm().item(),
        "loss": loss,
        "grad_norm": grad.norm().item(),
        "batch_acc": acc,
        "images": sum(len(y) for _, y in batches),
        "dim_means": orthonormal_basis(mean_basis).shape[1],
        "dim_moments": projected.q.shape[1],
        "hvp_products": op.products,
        "seconds": time.time() - t0,
    }
    return summary, spectrum


def compute(done: pd.DataFrame, out: Path) -> None:
    nets, spectra = [], []
    measured = _measured_runs(done)
    for _, run in done.iterrows():
        if str(run["run_id"]) not in measured:
            continue
        for net, model, loss_fn, batches, cfg in nets_of_run(Path(run["run_dir"])):
            summary, spectrum = measure(net, model, loss_fn, batches, cfg)
            ids = {"run_id": run["run_id"], "arm": run["arm"], "seed": int(run["seed"])}
            nets.append({**ids, **summary})
            spectra.append(spectrum.assign(**ids))
            print(
                f"[hessian] {run['run_id']} {net}: top eigenvalue {spectrum['eigenvalue'].iloc[0]:.4g}, "
                f"{summary['hvp_products']} Hessian-vector products, {summary['seconds']:.0f}s",
                flush=True,
            )
    pd.DataFrame(nets).to_csv(out / NETS, index=False)
    pd.concat(spectra, ignore_index=True).to_csv(out / SPECTRA, index=False)


def _measured_runs(done: pd.DataFrame) -> set[str]:
    """Run ids whose nets the analysis measures (hessian.seeds of each run's config; null = every seed)."""
    ids = set()
    for _, run in done.iterrows():
        seeds = OmegaConf.load(Path(run["run_dir"]) / "config.yaml").hessian.get("seeds")
        if seeds is None or int(run["seed"]) in seeds:
            ids.add(str(run["run_id"]))
    return ids


def _cache_matches(done: pd.DataFrame, out: Path) -> bool:
    """The cached spectra were measured on exactly these runs (a cache left by earlier runs is measured again)."""
    if not ((out / SPECTRA).exists() and (out / NETS).exists()):
        return False
    cached = set(pd.read_csv(out / NETS)["run_id"].astype(str))
    if all(Path(r).is_dir() for r in done["run_dir"]):
        return cached == _measured_runs(done)
    return cached <= set(done["run_id"].astype(str))  # run directories gone (a fresh clone): keep what was measured


def outliers_above_projected(eigenvalues: np.ndarray, projected: np.ndarray) -> float:
    """Number of the top-k eigenvalues above the largest eigenvalue left once the output-moment span is projected
    out: the outliers that span accounts for (a gap-based count is arbitrary with only k ~ 10 eigenvalues)."""
    p = np.asarray(projected, dtype=float)
    p = p[np.isfinite(p)]
    if p.size == 0:
        return float("nan")
    return float((np.asarray(eigenvalues, dtype=float) > p.max()).sum())


def _ms(values, fmt: str) -> str:
    v = pd.Series(values).dropna()
    if v.empty:
        return "–"
    return format(v.mean(), fmt) + (f" ± {format(v.std(ddof=1), fmt)}" if len(v) > 1 else "")


def analyze(runs: pd.DataFrame, epochs: pd.DataFrame, out) -> list:
    out = Path(out)
    done = completed(runs)
    if not _cache_matches(done, out):  # measured once per set of runs; a new collection measures again
        compute(done, out)
    nets, spectra = pd.read_csv(out / NETS), pd.read_csv(out / SPECTRA)
    order = arm_order(nets["net"], NET_ORDER)
    rows = []
    per_net = {}
    for net in order:
        s = spectra[spectra["net"] == net]
        n = nets[nets["net"] == net]
        by_run = s.groupby("run_id")
        top = by_run["eigenvalue"].max()
        per_net[net] = top
        k_means = by_run.apply(lambda g: (g["frac_means"] > 0.5).sum())
        rows.append(
            {
                "net": LABELS[net],
                "runs": len(n),
                "batch loss": _ms(n["loss"], ".3f"),
                "batch acc (%)": _ms(n["batch_acc"] * 100, ".1f"),
                "|params|": _ms(n["param_norm"], ".1f"),
                "lambda_1": _ms(top, ".4g"),
                "2 / lambda_1": _ms(2 / top, ".3g"),
                "outliers (above projected lambda_1)": _ms(
                    by_run.apply(lambda g: outliers_above_projected(g["eigenvalue"], g["projected_eigenvalue"])), ".1f"
                ),
                "eigvecs >50% in means span": _ms(k_means, ".1f"),
                "mean frac in means span, top 10": _ms(by_run.apply(lambda g: g["frac_means"].head(10).mean()), ".2f"),
                "mean frac in moments span, top 10": _ms(
                    by_run.apply(lambda g: g["frac_moments"].head(10).mean()), ".2f"
                ),
                "lambda_1 projected": _ms(by_run["projected_eigenvalue"].max(), ".4g"),
                "lambda_1 / projected": _ms(top / by_run["projected_eigenvalue"].max(), ".3g"),
                "dims (means, moments)": f"{int(n['dim_means'].iloc[0])}, {int(n['dim_moments'].iloc[0])}",
            }
        )
    table = pd.DataFrame(rows)
    ratio = ""
    if {"bn", "no_bn"} <= set(per_net):
        r = per_net["no_bn"].mean() / per_net["bn"].mean()
        ratio += f" Top eigenvalue no BN / BN: {r:.3g}x."
    if {"bn", "frozen_bn"} <= set(per_net):
        ratio += f" Frozen BN / BN: {per_net['frozen_bn'].mean() / per_net['bn'].mean():.3g}x."
    images = int(nets["images"].iloc[0])
    written = write_table(
        table,
        out,
        "hessian_table",
        f"Hessian of the training loss (with label smoothing) over {images} fixed training images: top eigenvalue, "
        "outliers (how many of the top k lie above the top eigenvalue left after projecting the 29-dim span out), "
        "fraction of each eigenvector's squared norm in the span of the gradients of the 10 output channel means "
        "(9 effective dims) and of means + variances + skews (29), and the top eigenvalue after projecting that "
        "span out. Mean ± std over seeds." + ratio,
    )
    written += _spectrum_figure(spectra, order, out)
    written += _overlap_figure(spectra, order, out)
    return written


def _spectrum_figure(spectra, order, out) -> list:
    fig, axes = new_figure(ncols=2, width=11.0, height=3.8)
    ax, ax_p = axes[0]
    for i, net in enumerate(order):
        s = spectra[spectra["net"] == net]
        for j, (_, g) in enumerate(s.groupby("seed")):
            kw = {"color": f"C{i}", "label": LABELS[net] if j == 0 else None, "marker": "o", "ms": 3}
            ax.plot(g["index"], g["eigenvalue"].clip(lower=1e-6), **kw)
            ax_p.plot(g["index"], g["eigenvalue"].clip(lower=1e-6), alpha=0.35, **{**kw, "label": None})
            p = g.dropna(subset=["projected_eigenvalue"])
            ax_p.plot(p["index"], p["projected_eigenvalue"].clip(lower=1e-6), ls="--", **kw)
    ax.set_yscale("log")
    n = spectra.groupby("net")["seed"].nunique().min()
    ax.set(
        xlabel="eigenvalue index",
        ylabel="Hessian eigenvalue",
        title=f"top Hessian eigenvalues, n = {n} seed{'s' if n > 1 else ''} per net",
    )
    ax.legend()
    ax_p.set_yscale("log")
    ax_p.set(
        xlabel="eigenvalue index",
        ylabel="Hessian eigenvalue",
        title="dashed: 29-dim output-moment span projected out",
    )
    ax_p.legend()
    return save_figure(fig, out, "hessian_eigenvalues")


def _overlap_figure(spectra, order, out) -> list:
    fig, axes = new_figure(ncols=len(order), width=4.2 * len(order), height=3.3)
    for ax, net in zip(axes[0], order):
        s = spectra[spectra["net"] == net]
        means = s.groupby("index")[["frac_moments", "frac_means"]].mean()
        idx = means.index.to_numpy()
        ax.bar(idx, means["frac_moments"], color="C1", alpha=0.5, label="means + variances + skews (29 dims)")
        ax.bar(idx, means["frac_means"], color="C0", width=0.5, label="means (9 dims)")
        ax.set_ylim(0, 1.02)
        n = s["seed"].nunique()
        ax.set(xlabel="eigenvector v_i", ylabel="fraction of |v_i|^2 in span", title=f"{LABELS[net]} (mean of n = {n})")
    axes[0][0].legend(fontsize=7, loc="upper right")
    return save_figure(fig, out, "hessian_eigenvector_overlaps")
