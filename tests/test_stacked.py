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
from bnlab.train.evaluate import evaluate
from bnlab.train.stacked import StackedModels, StackedSGD, StackingError, evaluate_stacked, stacked_step

K, STEPS, BATCH = 3, 4, 16
LRS = [0.05, 0.1, 0.02]
LR_FACTORS = [1.0, 0.5, 0.5, 0.25]  # a schedule's multiplier per step, the same for every run
SGD = {"momentum": 0.9, "weight_decay": 5e-4, "nesterov": True}


def make_model(seed: int, norm: str = "batch", **norm_overrides) -> nn.Module:
    """resnet20 at width 0.25 in float64; norm "torch" = nn.BatchNorm2d, else a conf/norm/ config."""
    torch.manual_seed(seed)
    if norm == "torch":
        factory = nn.BatchNorm2d
    else:
        factory = build_norm(OmegaConf.merge(OmegaConf.load(Path(CONF_DIR) / "norm" / f"{norm}.yaml"), norm_overrides))
    model_cfg = OmegaConf.merge(OmegaConf.load(Path(CONF_DIR) / "model" / "resnet20.yaml"), {"width": 0.25})
    return build_model(model_cfg, factory, in_channels=1, num_classes=10).double()


def batches(steps: int = STEPS):
    """One batch per run and step: x (steps, K, BATCH, 1, 12, 12), y (steps, K, BATCH)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps, K, BATCH, 1, 12, 12, generator=g, dtype=torch.float64) * 2 + 0.5
    return x, torch.randint(0, 10, (steps, K, BATCH), generator=g)


class Batches(list):
    """A list of (x, y) validation batches with the `device` bnlab.train.evaluate's loop reads."""

    device = "cpu"


@pytest.mark.parametrize("norm", ["batch", "torch"], ids=["bnlab_BatchNorm2d", "nn_BatchNorm2d"])
def test_stacked_runs_equal_separate_runs(norm):
    x, y = batches()
    separate = [make_model(seed, norm) for seed in range(K)]
    stacked = StackedModels([make_model(seed, norm) for seed in range(K)])
    opts = [torch.optim.SGD(m.parameters(), lr=lr, **SGD) for m, lr in zip(separate, LRS)]
    stacked_opt = StackedSGD(stacked.params, LRS, **SGD)
    for step, factor in enumerate(LR_FACTORS):
        for i, (m, opt) in enumerate(zip(separate, opts)):
            opt.param_groups[0]["lr"] = LRS[i] * factor
            opt.zero_grad()
            nn.functional.cross_entropy(m(x[step, i]), y[step, i]).backward()
            opt.step()
        stacked_step(stacked, stacked_opt, x[step], y[step], lr_factor=factor)
    for i, m in enumerate(separate):
        ours = stacked.state_dict(i)
        for name, t in m.state_dict().items():  # parameters, running_mean/var and num_batches_tracked
            torch.testing.assert_close(ours[name], t, rtol=1e-9, atol=1e-11, msg=f"model {i}: {name}")

    val_x, val_y = batches(steps=2)
    val = Batches((val_x[s].flatten(0, 1), val_y[s].flatten(0, 1)) for s in range(2))  # 2 batches of K * BATCH
    ours = evaluate_stacked(stacked, val)
    assert stacked.training  # evaluation restored the training mode
    for i, m in enumerate(separate):
        theirs = evaluate(m, val, nn.functional.cross_entropy, "running")  # eval mode: the EMA statistics
        assert ours["err"][i].item() == theirs["err"]
        assert ours["loss"][i].item() == pytest.approx(theirs["loss"], rel=1e-6)  # bnlab sums the loss in float32
        unstacked = evaluate(stacked.model(i), val, nn.functional.cross_entropy, "running")
        assert unstacked == pytest.approx(theirs, rel=1e-12)
    assert len({round(v, 6) for v in ours["loss"].tolist()}) == K  # the runs really differ


def test_running_statistics_stay_per_model():
    x, y = batches()
    stacked = StackedModels([make_model(0) for _ in range(K)])  # identical initial models ...
    stacked_step(stacked, StackedSGD(stacked.params, [0.1] * K), x[0], y[0])  # ... on different batches
    bn_buffers = {n: t for n, t in stacked.buffers.items() if n.endswith(("running_mean", "running_var"))}
    assert len(bn_buffers) == 2 * 19  # every BN layer of resnet20
    for name, t in bn_buffers.items():
        assert not torch.allclose(t[0], t[1]) and not torch.allclose(t[1], t[2]), name
    for name, t in stacked.buffers.items():  # each model counted its own one batch (a shared buffer: K)
        if name.endswith("num_batches_tracked"):
            assert t.tolist() == [1] * K, name


def test_models_must_share_the_architecture():
    with pytest.raises(ValueError, match="one architecture"):
        StackedModels([make_model(0), nn.Linear(2, 2)])


def test_layers_that_cannot_be_stacked_are_named():
    with pytest.raises(StackingError, match=r"BatchNorm2d 'stem.1'.*nbs=4 \(Ghost"):
        StackedModels([make_model(0, "batch", nbs=4) for _ in range(2)])
    with pytest.raises(StackingError, match=r"BatchRenorm2d 'stem.1'.*vmap rule"):
        StackedModels([make_model(0, "renorm") for _ in range(2)])
    with pytest.raises(StackingError, match=r"momentum=None"):
        StackedModels([make_model(0, "torch").apply(lambda m: setattr(m, "momentum", None)) for _ in range(2)])

    class HostSync(nn.Module):  # an unknown layer that works alone but not under vmap (.item())
        def forward(self, x):
            return x * float(x.mean())

    stacked = StackedModels([nn.Sequential(nn.Linear(3, 3), HostSync()) for _ in range(2)])
    with pytest.raises(StackingError, match=r"layer '1' \(HostSync\) failed under torch.func.vmap"):
        stacked(torch.randn(2, 4, 3))
