"""Per-channel activation distributions: capture them with forward hooks, plot them, and summarise them.

Myrtle.ai, "How to train your ResNet 7: batch norm" (D. Page, 2019), "Per channel histograms": BN acts on the
distribution of each channel (over pixels and examples of a batch), so those are what to watch. Pooled over
channels a deep ReLU net at He init looks fine, while per channel each unit has become almost constant.

The one-number summary is the law of total variance (the post's argument for the collapse): with equal counts per
channel, total variance = mean of per-channel variances + variance of per-channel means, so

    within_channel_fraction = mean_c Var(x_c) / Var(x)   in [0, 1]

is 1 when every channel has the same mean (i.i.d. channels) and 0 when each channel is a constant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

MAX_CHANNELS = 10  # the post shows at most 10 channels per layer
KDE_POINTS = 2000  # values per channel fed to the kernel density estimate (a seeded subsample)
POOLED_POINTS = 200_000  # values in the pooled histogram


def channel_values(t: Tensor) -> Tensor:
    """(N, C, *spatial) or (N, C) -> (C, N * prod(spatial)): every value of a channel over the batch and pixels."""
    if t.dim() < 2:
        raise ValueError(f"expected (N, C, ...) activations, got shape {tuple(t.shape)}")
    return t.detach().transpose(0, 1).reshape(t.shape[1], -1)


def resolve_layers(model: nn.Module, layers: Sequence[str] | Mapping[str, nn.Module]) -> dict[str, nn.Module]:
    """Module names (as in model.named_modules()) or a {label: module} mapping -> {label: module}."""
    if isinstance(layers, Mapping):
        return dict(layers)
    named = dict(model.named_modules())
    missing = [n for n in layers if n not in named]
    if missing:
        raise KeyError(f"no module named {missing[0]!r} in the model (e.g. {list(named)[1:6]})")
    return {n: named[n] for n in layers}


@torch.no_grad()
def capture_channels(
    model: nn.Module,
    x: Tensor,
    layers: Sequence[str] | Mapping[str, nn.Module],
    where: str = "output",
) -> dict[str, Tensor]:
    """Run `model(x)` once and return {layer: (C, values) float64 tensor on CPU} of each layer's output
    (`where="output"`) or first input (`where="input"`, e.g. an activation's input = the pre-activation).

    The model's train/eval mode is the caller's choice (BN in train mode normalizes with this batch's statistics).
    """
    if where not in ("output", "input"):
        raise ValueError(f"where must be 'output' or 'input', got {where!r}")
    found: dict[str, Tensor] = {}
    handles = []
    for label, module in resolve_layers(model, layers).items():

        def hook(mod, args, output, label=label):
            t = output if where == "output" else args[0]
            found[label] = channel_values(t).to("cpu", torch.float64)

        handles.append(module.register_forward_hook(hook))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return {label: found[label] for label in resolve_layers(model, layers) if label in found}


def within_channel_fraction(values: Tensor) -> float:
    """Mean of per-channel variances / variance of all values (population variances): see the module docstring.

    `values` is (C, n). NaN when all values are equal (no variance to split).
    """
    v = values.to(torch.float64)
    total = v.var(unbiased=False).item()
    if not total > 0:
        return float("nan")
    return v.var(dim=1, unbiased=False).mean().item() / total


def channel_summary(values: Tensor) -> dict:
    """Within-channel fraction and the scales it compares: total std, rms within-channel std, std of the means."""
    v = values.to(torch.float64)
    return {
        "within_channel_fraction": within_channel_fraction(v),
        "total_std": v.std(unbiased=False).item(),
        "within_std": v.var(dim=1, unbiased=False).mean().sqrt().item(),
        "std_of_means": v.mean(dim=1).std(unbiased=False).item(),
        "channels": v.shape[0],
        "values_per_channel": v.shape[1],
    }


def _subsample(a: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return a if a.size <= n else rng.choice(a, n, replace=False)


def _kde_curve(values: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    """Gaussian KDE of one channel on its own range (a narrow channel keeps its resolution); None if constant."""
    from scipy.stats import gaussian_kde

    sample = _subsample(values, KDE_POINTS, rng)
    if np.ptp(sample) == 0:
        return None
    kde = gaussian_kde(sample)
    pad = 3 * float(np.sqrt(kde.covariance[0, 0]))
    grid = np.linspace(values.min() - pad, values.max() + pad, 400)
    return grid, kde(grid)


def plot_channel_distributions(
    captures: Mapping[str, Tensor],
    title: str | None = None,
    max_channels: int = MAX_CHANNELS,
    tick_density: float = 0.2,
    seed: int = 0,
):
    """One row per layer: left, kernel density estimates of up to `max_channels` channels in different colours,
    each channel's mean marked underneath and its min/max as vertical ticks of a fixed height in density units
    (short ticks = a peaked channel, as in the post); right, the histogram of all channels pooled.
    Returns the matplotlib figure (the caller saves it)."""
    from bnlab.results.figures import new_figure

    rng = np.random.default_rng(seed)
    fig, axes = new_figure(ncols=2, nrows=len(captures), width=10.0, height=1.9 * len(captures))
    colors = [f"C{i}" for i in range(10)]
    for (label, values), (ax_ch, ax_pool) in zip(captures.items(), axes):
        v = values.to(torch.float64).numpy()
        shown = v[:max_channels]
        peak = tick_density
        for i, ch in enumerate(shown):
            color = colors[i % len(colors)]
            curve = _kde_curve(ch, rng)
            if curve is None:  # a constant channel: a spike
                ax_ch.axvline(ch[0], color=color, lw=1.2)
            else:
                ax_ch.plot(*curve, color=color, lw=1.1)
                ax_ch.fill_between(*curve, color=color, alpha=0.08, lw=0)
                peak = max(peak, float(curve[1].max()))
            ax_ch.vlines([ch.min(), ch.max()], 0, tick_density, color=color, lw=1.4)
        ax_ch.set_ylim(-0.12 * peak, 1.05 * peak)
        ax_ch.scatter(shown.mean(axis=1), np.full(len(shown), -0.06 * peak), c=colors[: len(shown)], s=14, marker="o")
        ax_ch.axhline(0, color="black", lw=0.5)
        s = channel_summary(values)
        ax_ch.set_title(
            f"{label}: per channel ({len(shown)} of {v.shape[0]}), within-channel variance fraction "
            f"{s['within_channel_fraction']:.3f}",
            fontsize=8,
        )
        ax_ch.set_ylabel("density")
        pooled = _subsample(v.ravel(), POOLED_POINTS, rng)
        ax_pool.hist(pooled, bins=100, density=True, color="grey", alpha=0.8)
        ax_pool.set_title(f"{label}: all {v.shape[0]} channels pooled (std {s['total_std']:.3g})", fontsize=8)
        lo, hi = min(ax_ch.get_xlim()[0], ax_pool.get_xlim()[0]), max(ax_ch.get_xlim()[1], ax_pool.get_xlim()[1])
        for ax in (ax_ch, ax_pool):  # one x range per row: pooled and per-channel views compare directly
            ax.set_xlim(lo, hi)
    axes[-1][0].set_xlabel("activation (dots: channel means; ticks: channel min / max)")
    axes[-1][1].set_xlabel("activation")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
