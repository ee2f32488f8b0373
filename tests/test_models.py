"""Models: every registered model trains a step with every normalization the norm library holds, parameter
counts match the papers, init options do what they say, and the Myrtle-post behaviours the studies rely on."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
import torchvision
from omegaconf import OmegaConf
from torch import nn

from bnlab.config_errors import ConfigError
from bnlab.models import MODELS, build_model
from bnlab.models.init import residual_last_norms
from bnlab.norm import NORMS, build_norm
from bnlab.train.__main__ import CONF_DIR
from conftest import compose_cfg

# tiny variants: (model config, input channels, image size)
TINY_MODELS = {
    "resnet20": ({"width": 0.25}, 3, 16),
    "resnet56": ({"width": 0.25}, 3, 8),
    "resnet18_cifar": ({"width": 0.125}, 3, 16),
    "convnet8": ({"width": 0.125}, 3, 16),
    "dwsep": ({"width": 0.25}, 3, 16),
    "mlp_deep": ({"depth": 3, "width": 16, "input_size": 8}, 3, 8),
    "resnet18": ({}, 1, 64),  # grayscale input: conv1 is replaced
    "resnet50": ({}, 3, 64),  # 64 px so that layer4 still has 2x2 positions (instance norm needs > 1)
}


@functools.cache
def norm_configs() -> dict[str, object]:
    """Every conf/norm/<name>.yaml composed as a run would see it, plus registry names without a yaml."""
    cfgs = {p.stem: compose_cfg([f"norm={p.stem}"]).norm for p in sorted(Path(CONF_DIR, "norm").glob("*.yaml"))}
    for name in NORMS:
        if not any(c.get("name") == name for c in cfgs.values()):
            cfgs[name] = OmegaConf.create({"name": name})
    return cfgs


def batch_for(norm_cfg) -> int:
    nbs = norm_cfg.get("nbs")
    return 8 if nbs is None else max(2 * nbs, 8)  # Ghost BN: whole groups of nbs


def test_registry_and_norm_configs_cover_everything():
    assert set(TINY_MODELS) == set(MODELS), "a registered model has no tiny variant in this test"
    assert {c.name for c in norm_configs().values()} == set(NORMS)


TORCHVISION = ("resnet18", "resnet50")  # ~1 s per step on 2 cores: the every-norm sweep of these is slow
EVERY_MODEL = [pytest.param(m, marks=pytest.mark.slow) if m in TORCHVISION else m for m in sorted(TINY_MODELS)]


@pytest.mark.parametrize("model_name", EVERY_MODEL)
def test_forward_backward_with_every_norm(model_name):
    forward_backward(model_name, norm_configs())


@pytest.mark.parametrize("model_name", TORCHVISION)
def test_torchvision_resnets_forward_backward_with_batch_norm(model_name):
    forward_backward(model_name, {"batch": norm_configs()["batch"]})


def forward_backward(model_name, norms):
    overrides, in_ch, size = TINY_MODELS[model_name]
    for label, norm_cfg in norms.items():
        torch.manual_seed(0)
        cfg = OmegaConf.create({"name": model_name, **overrides})
        if model_name == "mlp_deep" and norm_cfg.name == "instance":
            with pytest.raises(ConfigError, match="norm.name"):  # one value per channel: nothing to normalize over
                build_model(cfg, build_norm(norm_cfg), in_ch, 10)
            continue
        model = build_model(cfg, build_norm(norm_cfg), in_ch, 10).train()
        x = torch.randn(batch_for(norm_cfg), in_ch, size, size)
        y = torch.arange(len(x)) % 10
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert math.isfinite(loss.item()), (model_name, label)
        assert all(g is not None and torch.isfinite(g).all() for g in grads), (model_name, label)
        assert any(g.abs().sum() > 0 for g in grads), (model_name, label)
        model.eval()
        with torch.no_grad():
            assert model(x[:2]).shape == (2, 10), (model_name, label)


def n_params(name, in_ch=3, num_classes=10, **kw):
    model = build_model(
        OmegaConf.create({"name": name, **kw}), build_norm(OmegaConf.create({"name": "batch"})), in_ch, num_classes
    )
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_the_papers():
    assert round(n_params("resnet20") / 1e6, 2) == 0.27  # He et al. 2016, Table 6
    assert round(n_params("resnet56") / 1e6, 2) == 0.85
    assert round(n_params("resnet18_cifar") / 1e6, 1) == 11.2
    assert n_params("resnet50") == sum(p.numel() for p in torchvision.models.resnet50(num_classes=10).parameters())
    assert n_params("resnet18") == sum(p.numel() for p in torchvision.models.resnet18(num_classes=10).parameters())
    assert n_params("resnet18", in_ch=1) == n_params("resnet18") - 2 * 64 * 7 * 7
    # convnet8: 7 bias-free 3x3 convs 64-128-128-256-256-512-512 with 2 BN params per channel, bias-free linear
    convs = [(3, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 512), (512, 512)]
    expected = sum(9 * i * o + 2 * o for i, o in convs) + 512 * 10
    assert n_params("convnet8") == expected


def test_dwsep_layout_shapes_and_parameter_count():
    cfg = OmegaConf.create({"name": "dwsep", "width": 0.5, "strides": [2, 2, 2, 1]})
    model = build_model(cfg, build_norm(OmegaConf.create({"name": "batch"})), 1, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    # stem + 7 blocks x (pointwise 1x1, depthwise 3x3 with one group per channel)
    assert len(convs) == 15 and all(c.groups == c.in_channels == c.out_channels for c in convs[2::2])
    assert [c.kernel_size for c in convs[1:3]] == [(1, 1), (3, 3)]
    feats = model.blocks(model.stem(torch.randn(2, 1, 28, 28)))
    assert feats.shape == (2, 256, 4, 4)  # 28 -> 14 -> 7 -> 4, then the stride-1 last stage
    # every block: pw weights in*out, dw weights 9*out, 2 norms of 2*out; stem 9*1*16 + 2*16; linear 256*10 + 10
    chans = [16, 32, 64, 64, 128, 128, 256, 256]
    expected = 9 * 16 + 32 + sum(i * o + 9 * o + 4 * o for i, o in zip(chans, chans[1:])) + 2570
    assert sum(p.numel() for p in model.parameters()) == expected == 144346
    with pytest.raises(ConfigError, match="model.channels"):
        build_model(
            OmegaConf.create({"name": "dwsep", "blocks": [1, 2]}),
            build_norm(OmegaConf.create({"name": "batch"})),
            1,
            10,
        )


def test_convnet8_is_the_notebook_layout():
    model = build_model(OmegaConf.create({"name": "convnet8"}), build_norm(OmegaConf.create({"name": "none"})), 3, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(convs) == 7 and len(pools) == 3 and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model.features(torch.randn(2, 3, 32, 32)).shape == (2, 512)


@pytest.mark.parametrize("name", ["resnet20", "resnet18_cifar", "resnet18", "resnet50"])
def test_zero_init_residual_makes_every_residual_branch_start_at_zero(name):
    extra = {"width": 0.25} if name in ("resnet20", "resnet18_cifar") else {}
    cfg = OmegaConf.create({"name": name, "zero_init_residual": True, **extra})
    model = build_model(cfg, build_norm(OmegaConf.create({"name": "batch"})), 3, 10)
    last = residual_last_norms(model)
    n_blocks = {"resnet20": 9, "resnet18_cifar": 8, "resnet18": 8, "resnet50": 16}[name]
    assert len(last) == n_blocks and all(torch.all(n.weight == 0) for n in last)
    if name == "resnet50":  # the bottleneck's last norm is bn3, not bn2
        assert all(torch.all(b.bn2.weight == 1) for b in model.modules() if hasattr(b, "bn3"))


@pytest.mark.parametrize("key, value", [("width", 0.5), ("width", 0), ("depth", 2.0), ("depth", True)])
def test_mlp_deep_counts_are_positive_integers_named_in_the_error(key, value):
    """mlp_deep's width counts units (a ResNet's model.width=0.5 is a multiplier): a float is refused by name
    before any layer is built, not as torch's `empty(): argument 'size'` from deep inside the model."""
    norm = build_norm(OmegaConf.create({"name": "batch"}))
    cfg = OmegaConf.create({"name": "mlp_deep", "depth": 3, "width": 16, "input_size": 8, key: value})
    with pytest.raises(ConfigError, match=rf"model\.{key}.*positive integer, got {value!r}"):
        build_model(cfg, norm, 1, 10)


def test_init_options():
    norm = build_norm(OmegaConf.create({"name": "none"}))
    mlp = build_model(OmegaConf.create({"name": "mlp_deep", "depth": 4, "width": 512, "input_size": 16}), norm, 2, 10)
    w = mlp.hidden[1][0].weight  # 512 x 512, He: std sqrt(2 / 512)
    assert abs(w.std().item() - math.sqrt(2 / 512)) < 0.002 and torch.all(mlp.hidden[1][0].bias == 0)
    # `default` really is PyTorch's init, even for torchvision models that He-initialize themselves
    cfg = OmegaConf.create({"name": "resnet18", "init": "default"})
    conv = build_model(cfg, build_norm(OmegaConf.create({"name": "batch"})), 3, 10).layer1[0].conv1
    fan_in = 64 * 9  # kaiming_uniform(a=sqrt(5)): std = 1 / sqrt(3 fan_in)
    assert abs(conv.weight.std().item() - 1 / math.sqrt(3 * fan_in)) < 0.002
    with pytest.raises(ConfigError, match="model.init"):
        build_model(OmegaConf.create({"name": "resnet20", "init": "xavier"}), norm, 3, 10)
    with pytest.raises(ConfigError, match="model.dropout.*not an option"):
        build_model(OmegaConf.create({"name": "convnet8", "dropout": 0.1}), norm, 3, 10)


def within_unit_variance_fraction(features: torch.Tensor) -> float:
    """Mean over units of their variance across inputs, over the total variance pooled across units (C6)."""
    return (features.var(0).mean() / features.flatten().var()).item()


def test_deep_relu_mlp_collapses_at_init_and_batch_norm_prevents_it():
    # Myrtle post: He init, N(0, 1) inputs, depth 50: each unit is nearly constant across inputs
    torch.manual_seed(0)
    x = torch.randn(256, 1, 16, 16)
    frac = {}
    for label, norm, act in (("relu", "none", "relu"), ("linear", "none", "identity"), ("bn", "batch", "relu")):
        cfg = OmegaConf.create({"name": "mlp_deep", "depth": 50, "width": 256, "input_size": 16, "activation": act})
        model = build_model(cfg, build_norm(OmegaConf.create({"name": norm})), 1, 10).train()
        with torch.no_grad():
            frac[label] = within_unit_variance_fraction(model.features(x))
    assert frac["relu"] < 0.1, frac  # variance has moved into the per-unit means
    assert frac["linear"] > 0.5 and frac["bn"] > 0.5, frac


def test_softplus_convnet8_has_nonzero_hessian_vector_products():
    # C7 uses double backprop; ReLU's second derivative vanishes almost everywhere, softplus's does not
    torch.manual_seed(0)
    cfg = OmegaConf.create({"name": "convnet8", "width": 0.125, "activation": "softplus"})
    model = build_model(cfg, build_norm(OmegaConf.create({"name": "none"})), 3, 10)
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    hvp = torch.autograd.grad(sum((g * u).sum() for g, u in zip(grads, v)), params)
    first_conv = hvp[0]  # curvature reaches the first layer only through the activations' second derivative
    assert torch.isfinite(first_conv).all() and first_conv.abs().sum() > 0
