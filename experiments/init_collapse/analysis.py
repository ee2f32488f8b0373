"""C6 at initialization: per-channel vs pooled activation distributions of deep nets, and the within-channel
fraction of variance by depth (bnlab.diagnostics.channel_hist). No training: the study is this script and its YAML.

    python experiments/init_collapse/analysis.py --preset cpu [--out DIR] [dotted.key=value ...]

writes results/init_collapse/<preset>/: tables (md, tex, csv), figures (png, pdf), the resolved config and where
it ran (config.yaml, provenance.json).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pandas as pd
import torch
from omegaconf import OmegaConf

from bnlab import CONF_DIR, REPO_ROOT
from bnlab.diagnostics.channel_hist import (
    capture_channels,
    channel_values,
    plot_channel_distributions,
    within_channel_fraction,
)
from bnlab.models import build_model
from bnlab.models.init import init_weights
from bnlab.models.mlp_deep import MLPDeep
from bnlab.norm import build_norm, freeze_batchnorm, precise_bn
from bnlab.results.figures import new_figure, save_figure
from bnlab.results.tables import write_table
from bnlab.utils.io import atomic_write_text
from bnlab.utils.provenance import environment

CONFIG = REPO_ROOT / "conf" / "analysis" / "init_collapse.yaml"
ARM_LABELS = {
    "relu": "ReLU",
    "linear": "linear",
    "relu_shift": "ReLU + mean shift / rescale (frozen BN at init)",
    "no_bn_random": "no BN, N(0,1) inputs",
    "no_bn_real": "no BN, real images",
    "bn_real": "BN (batch statistics), real images",
    "frozen_bn_real": "frozen BN (set at init), real images",
}


def load_config(preset: str, overrides: list[str] = ()) -> OmegaConf:
    base = OmegaConf.load(CONFIG)
    presets = base.pop("presets")
    if preset not in presets:
        raise SystemExit(f"error: unknown preset {preset!r} (allowed: {sorted(presets)})")
    return OmegaConf.merge(base, presets[preset], OmegaConf.from_dotlist(list(overrides)), {"preset": preset})


# ---------------------------------------------------------------- deep MLP, N(0,1) inputs


def build_mlp(mcfg, arm) -> MLPDeep:
    norm = build_norm(OmegaConf.create({"name": "batch"})) if arm.shift else None
    model = MLPDeep(
        in_features=mcfg.width,
        num_classes=10,
        norm=norm,
        depth=mcfg.depth,
        width=mcfg.width,
        activation=arm.activation,
        norm_position="after_activation",  # the shift/rescale follows each ReLU (post: "after each ReLU layer")
    )
    init_weights(model, "kaiming_fan_in")  # He et al.: N(0, 2 / fan_in), zero biases
    with torch.no_grad():
        for block in model.hidden:
            block[0].weight.mul_(float(arm.weight_scale))
    return model


@torch.no_grad()
def mlp_pre_activations(mcfg, arm, seed: int) -> dict[int, torch.Tensor]:
    """{depth: (width, batch) linear outputs}; depth 0 is the input itself."""
    torch.manual_seed(seed)
    model = build_mlp(mcfg, arm)
    x = torch.randn(mcfg.batch, mcfg.width)
    if arm.shift:  # frozen BN: statistics of independent inputs at init, then constant
        precise_bn(model, [torch.randn(mcfg.calibration_batch, mcfg.width)], mcfg.calibration_batch)
        model = freeze_batchnorm(model)
    model.eval()
    found = {0: channel_values(x).double()}
    hooks = [
        block[0].register_forward_hook(lambda m, a, out, d=d: found.__setitem__(d, channel_values(out).double()))
        for d, block in enumerate(model.hidden, start=1)
    ]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return found


def mlp_study(cfg, out: Path) -> list[Path]:
    rows, written = [], []
    for name, arm in cfg.mlp.arms.items():
        for seed in cfg.seeds:
            acts = mlp_pre_activations(cfg.mlp, arm, seed)
            rows += [
                {"arm": name, "seed": seed, "depth": d, "fraction": within_channel_fraction(v)} for d, v in acts.items()
            ]
            if seed == cfg.seeds[0]:
                shown = {f"depth {d}": acts[d] for d in cfg.mlp.shown_depths}
                title = (
                    f"{ARM_LABELS.get(name, name)}: {cfg.mlp.depth} layers of {cfg.mlp.width}, He init, N(0,1) inputs"
                )
                written += save_figure(plot_channel_distributions(shown, title=title), out, f"init_collapse_mlp_{name}")
    df = pd.DataFrame(rows)
    per_seed = (
        out / "init_collapse_mlp_per_seed.csv"
    )  # what the claim tests read (experiments/init_collapse/claim.yaml)
    written.append(atomic_write_text(per_seed, df.to_csv(index=False)))
    written += _fraction_table(
        df,
        "depth",
        cfg.mlp.shown_depths,
        out,
        "init_collapse_mlp_fraction",
        (
            "Within-channel fraction of variance (mean of per-channel variances / total variance) of the linear "
            "outputs "
            f"of a {cfg.mlp.depth}-layer, width-{cfg.mlp.width} MLP at He init on N(0,1) inputs "
            f"({cfg.mlp.batch} samples), mean ± std over {len(cfg.seeds)} seeds. 1 = channels differ only in spread; "
            "0 = every channel is a constant."
        ),
    )
    fig, axes = new_figure(width=6.0, height=3.6)
    ax = axes[0][0]
    for name in cfg.mlp.arms:
        stats = df[df["arm"] == name].groupby("depth")["fraction"].agg(["mean", "std"]).fillna(0)
        line = ax.plot(stats.index, stats["mean"], label=ARM_LABELS.get(name, name))[0]
        ax.fill_between(
            stats.index,
            stats["mean"] - stats["std"],
            stats["mean"] + stats["std"],
            color=line.get_color(),
            alpha=0.2,
            lw=0,
        )
    ax.set_yscale("log")
    ax.set(
        xlabel="depth (linear layer)",
        ylabel="within-channel fraction of variance",
        title=f"Deep MLP at init ({len(cfg.seeds)} seeds)",
    )
    ax.legend()
    written += save_figure(fig, out, "init_collapse_mlp_fraction")
    return written


# ---------------------------------------------------------------- convnet8, random and real inputs


def real_batches(cfg, n: int, count: int, seed: int) -> list[torch.Tensor]:
    """`count` batches of `n` normalized validation images of cfg.convnet.data (the training pipeline's data path)."""
    from hydra import compose, initialize_config_dir

    from bnlab.data import build_data

    overrides = [
        f"data={cfg.convnet.data}",
        f"train.batch_size={n}",
        "data.val_subset=null",
        "logger=none",
        f"seed={seed}",
    ]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        tcfg = compose("train", overrides=overrides)
    data = build_data(tcfg, "cpu")
    g = torch.Generator().manual_seed(seed)
    images = torch.cat([x for x, _ in data.val])
    idx = torch.randperm(len(images), generator=g)[: n * count]
    return list(images[idx].split(n))


def convnet_layers(model) -> tuple[dict, dict]:
    """Pre-activation of each conv block (its activation's input, i.e. after the norm) and the classifier output."""
    blocks = [m for m in model.layers if isinstance(m, torch.nn.Sequential)]
    acts = {f"conv {i + 1}": block[2] for i, block in enumerate(blocks)}
    return acts, {"classifier": model.fc}


@torch.no_grad()
def convnet_activations(cfg, arm, seed: int, images: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    norm_name = "none" if arm.norm == "none" else "batch"
    model_cfg = OmegaConf.create({"name": "convnet8", "width": cfg.convnet.width, "activation": cfg.convnet.activation})
    x, calib = images
    if arm.inputs == "random":
        x, calib = torch.randn_like(x), torch.randn_like(calib)
    model = build_model(model_cfg, build_norm(OmegaConf.create({"name": norm_name})), x.shape[1], 10)
    if arm.norm == "frozen":
        precise_bn(model, [calib], len(calib))
        model = freeze_batchnorm(model)
    model.train()  # BN: this batch's statistics; frozen BN and no BN are the same in both modes
    acts, out = convnet_layers(model)
    found = capture_channels(model, x, acts, where="input")
    found.update(capture_channels(model, x, out, where="output"))
    return found


def convnet_study(cfg, out: Path) -> list[Path]:
    rows, written = [], []
    for seed in cfg.seeds:
        images = real_batches(cfg, cfg.convnet.batch, 2, seed)
        for name, arm in cfg.convnet.arms.items():
            acts = convnet_activations(cfg, arm, seed, images)
            rows += [
                {"arm": name, "seed": seed, "layer": k, "fraction": within_channel_fraction(v)} for k, v in acts.items()
            ]
            if seed == cfg.seeds[0]:
                title = (
                    f"convnet8 (width {cfg.convnet.width}) at init: {ARM_LABELS.get(name, name)} ({cfg.convnet.data})"
                )
                written += save_figure(
                    plot_channel_distributions(acts, title=title), out, f"init_collapse_convnet_{name}"
                )
    df = pd.DataFrame(rows)
    layers = list(dict.fromkeys(df["layer"]))
    written += _fraction_table(
        df,
        "layer",
        layers,
        out,
        "init_collapse_convnet_fraction",
        (
            f"Within-channel fraction of variance per layer of convnet8 (width {cfg.convnet.width}) at He init: "
            "pre-activations of the 7 conv blocks (after the norm, where there is one) and the classifier outputs, "
            f"on a batch of {cfg.convnet.batch} N(0,1) or {cfg.convnet.data} inputs; "
            f"mean ± std over {len(cfg.seeds)} seeds."
        ),
    )
    fig, axes = new_figure(width=6.0, height=3.6)
    ax = axes[0][0]
    pos = {k: i for i, k in enumerate(layers)}
    for name in cfg.convnet.arms:
        stats = df[df["arm"] == name].groupby("layer", sort=False)["fraction"].agg(["mean", "std"]).fillna(0)
        xs = [pos[k] for k in stats.index]
        ax.errorbar(xs, stats["mean"], yerr=stats["std"], marker="o", capsize=3, label=ARM_LABELS.get(name, name))
    ax.set_xticks(range(len(layers)), layers, rotation=30)
    ax.set_yscale("log")
    ax.set(ylabel="within-channel fraction of variance", title=f"convnet8 at init ({len(cfg.seeds)} seeds)")
    ax.legend(fontsize=7)
    written += save_figure(fig, out, "init_collapse_convnet_fraction")
    return written


def _fraction_table(df, key, order, out, name, caption) -> list[Path]:
    stats = df.groupby(["arm", key], sort=False)["fraction"].agg(["mean", "std"]).fillna(0)
    arms = list(dict.fromkeys(df["arm"]))
    table = pd.DataFrame(
        {key: order, **{a: [_cell(*stats.loc[(a, k)]) if (a, k) in stats.index else "–" for k in order] for a in arms}}
    )
    return write_table(table, out, name, caption)


def _cell(mean: float, std: float) -> str:
    if not math.isfinite(mean):
        return "–"
    digits = max(3, 1 - math.floor(math.log10(abs(mean)))) if mean else 3  # small fractions keep 2 significant
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def run(cfg, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg))]
    written += mlp_study(cfg, out)
    written += convnet_study(cfg, out)
    written.append(atomic_write_text(out / "provenance.json", json.dumps(environment("cpu"), indent=1) + "\n"))
    return written


def analyze_without_runs(preset: str, out: Path) -> list[Path]:
    """`bnlab figures init_collapse --preset <preset>` (and `make figures EXP=init_collapse`): nothing is trained,
    so the analysis computes everything from its preset."""
    return run(load_config(preset), Path(out))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu", help="cpu | gpu (conf/analysis/init_collapse.yaml presets)")
    p.add_argument("--out", default=None, help="results folder (default results/init_collapse/<preset>)")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the YAML, e.g. seeds=[0]")
    args = p.parse_args(argv)
    cfg = load_config(args.preset, args.overrides)
    out = Path(args.out) if args.out else REPO_ROOT / "results" / "init_collapse" / args.preset
    for path in run(cfg, out):
        print(path)


if __name__ == "__main__":
    main()
