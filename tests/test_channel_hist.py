"""Per-channel activation capture and the within-channel fraction of variance (law of total variance)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnlab.diagnostics.channel_hist import (
    capture_channels,
    channel_summary,
    channel_values,
    plot_channel_distributions,
    within_channel_fraction,
)


def test_constant_channels_have_fraction_zero_and_iid_channels_about_one():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(16, 1, generator=g) * 3
    assert within_channel_fraction(means.expand(16, 500)) == pytest.approx(0.0, abs=1e-12)
    iid = torch.randn(16, 20_000, generator=g)
    assert within_channel_fraction(iid) == pytest.approx(1.0, abs=5e-3)


def test_fraction_matches_the_law_of_total_variance():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 1000, generator=g, dtype=torch.float64) * torch.rand(8, 1, generator=g, dtype=torch.float64)
    x = x + 2 * torch.randn(8, 1, generator=g, dtype=torch.float64)
    within, between = x.var(1, unbiased=False).mean(), x.mean(1).var(unbiased=False)
    assert within + between == pytest.approx(x.var(unbiased=False).item(), rel=1e-10)
    assert within_channel_fraction(x) == pytest.approx((within / (within + between)).item(), rel=1e-10)
    s = channel_summary(x)
    assert s["within_std"] ** 2 + s["std_of_means"] ** 2 == pytest.approx(s["total_std"] ** 2, rel=1e-10)
    assert within_channel_fraction(torch.ones(3, 5)) != within_channel_fraction(torch.ones(3, 5))  # NaN


def test_channel_values_pools_batch_and_pixels_per_channel():
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    v = channel_values(x)
    assert v.shape == (3, 8)
    assert sorted(v[1].tolist()) == sorted(x[:, 1].flatten().tolist())


def test_capture_hooks_record_inputs_and_outputs_and_are_removed():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    x = torch.randn(7, 1, 8, 8)
    got = capture_channels(model, x, ["0", "1", "3"])
    assert got["0"].shape == (4, 7 * 36) and got["3"].shape == (5, 7)
    assert torch.allclose(got["1"], got["0"].clamp(min=0))
    pre = capture_channels(model, x, {"pre-relu": model[1]}, where="input")
    assert torch.allclose(pre["pre-relu"], got["0"])
    assert not model[0]._forward_hooks and not model[1]._forward_hooks
    with pytest.raises(KeyError, match="no module named"):
        capture_channels(model, x, ["nope"])


def test_plot_has_a_row_per_layer_with_kdes_and_pooled_histograms():
    g = torch.Generator().manual_seed(0)
    caps = {"spread": torch.randn(12, 300, generator=g), "collapsed": torch.randn(12, 1, generator=g).expand(12, 300)}
    fig = plot_channel_distributions(caps, title="t")
    axes = fig.axes
    assert len(axes) == 4
    assert len(axes[0].lines) >= 10  # one KDE per shown channel (10 of 12) plus the zero line
    assert "1.000" in axes[0].get_title() or "0.99" in axes[0].get_title()
    assert "0.000" in axes[2].get_title()  # constant channels: fraction 0
    assert len(axes[1].patches) == 100  # pooled histogram bins
