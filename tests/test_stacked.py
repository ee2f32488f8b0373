"""k runs stacked with torch.func (bnlab.train.stacked) = k separate runs, BN running statistics included."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from bnlab import CONF_DIR
from bnlab.models import build_model
from bnlab.norm.factory import build_norm
from bnlab.train.stacked import StackedModels, StackedSGD, stacked_step

K, STEPS, BATCH = 3, 4, 16
LRS = [0.05, 0.1, 0.02]
SGD = {"momentum": 0.9, "weight_decay": 5e-4, "nesterov": True}


def make_model(seed: int, norm: str = "batch") -> nn.Module:
    torch.manual_seed(seed)
    norm_cfg = OmegaConf.load(Path(CONF_DIR) / "norm" / f"{norm}.yaml")
    model_cfg = OmegaConf.merge(OmegaConf.load(Path(CONF_DIR) / "model" / "resnet20.yaml"), {"width": 0.25})
    return build_model(model_cfg, build_norm(norm_cfg), in_channels=1, num_classes=10).double()


def batches():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(STEPS, K, BATCH, 1, 12, 12, generator=g, dtype=torch.float64) * 2 + 0.5
    return x, torch.randint(0, 10, (STEPS, K, BATCH), generator=g)


def test_stacked_runs_equal_separate_runs():
    x, y = batches()
    separate = [make_model(seed) for seed in range(K)]
    stacked = StackedModels([make_model(seed) for seed in range(K)])
    opts = [torch.optim.SGD(m.parameters(), lr=lr, **SGD) for m, lr in zip(separate, LRS)]
    stacked_opt = StackedSGD(stacked.params, LRS, **SGD)
    for step in range(STEPS):
        for i, (m, opt) in enumerate(zip(separate, opts)):
            opt.zero_grad()
            nn.functional.cross_entropy(m(x[step, i]), y[step, i]).backward()
            opt.step()
        stacked_step(stacked, stacked_opt, x[step], y[step])
    for i, m in enumerate(separate):
        ours = stacked.state_dict(i)
        for name, t in m.state_dict().items():  # parameters, running_mean/var and num_batches_tracked
            torch.testing.assert_close(ours[name], t, rtol=1e-9, atol=1e-11, msg=f"model {i}: {name}")
    with torch.no_grad():
        stacked.eval()
        out = stacked(x[0])
        for i, m in enumerate(separate):
            torch.testing.assert_close(out[i], m.eval()(x[0, i]), rtol=1e-9, atol=1e-11)


def test_running_statistics_stay_per_model():
    x, y = batches()
    stacked = StackedModels([make_model(0) for _ in range(K)])  # identical initial models ...
    stacked_step(stacked, StackedSGD(stacked.params, [0.1] * K), x[0], y[0])  # ... on different batches
    rm = next(t for n, t in stacked.buffers.items() if n.endswith("running_mean"))
    assert not torch.allclose(rm[0], rm[1]) and not torch.allclose(rm[1], rm[2])


def test_models_must_share_the_architecture():
    with pytest.raises(ValueError, match="one architecture"):
        StackedModels([make_model(0), nn.Linear(2, 2)])
