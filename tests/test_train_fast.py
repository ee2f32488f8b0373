"""The step's fast paths (bnlab.train.fast): each switch against the plain eager step, on CPU."""

from __future__ import annotations

import copy
import time

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from bnlab.config_errors import ConfigError
from bnlab.models import build_model
from bnlab.norm import build_norm
from bnlab.runner import run
from bnlab.train.fast import prepare_training_model
from bnlab.train.run_dir import run_id


def _model(tiny_cfg, *overrides):
    cfg = tiny_cfg(*overrides)
    torch.manual_seed(0)
    return build_model(cfg.model, build_norm(cfg.norm), 1, 10), cfg


def _train_cfg(**kw):
    return OmegaConf.create({"channels_last": False, "autocast": None, "compile": False, **kw})


def _step(net, model, x, y):
    model.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()], [b.clone() for b in model.buffers()]


def _data(b=16):
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, 1, 28, 28, generator=g), torch.randint(0, 10, (b,), generator=g)


def test_new_keys_at_their_defaults_keep_the_run_hash(tiny_cfg):
    cfg = tiny_cfg()
    plain = copy.deepcopy(cfg)
    with open_dict(plain):
        for key in ("channels_last", "autocast", "compile"):
            plain.train.pop(key)
    assert run_id(cfg) == run_id(plain)
    assert run_id(tiny_cfg("train.channels_last=true")) != run_id(cfg)


def test_all_off_trains_the_model_itself(tiny_cfg):
    model, cfg = _model(tiny_cfg)
    assert prepare_training_model(model, cfg.train, "cpu") is model


@pytest.mark.parametrize("norm", ["norm=batch", "norm.nbs=4", "norm.nbs=4 norm.ghost_layout=strided", "norm=renorm"])
def test_channels_last_step_matches_the_contiguous_step(tiny_cfg, norm):
    # float64: the same computation up to rounding (in float32, conv algorithms differ by NHWC/NCHW and
    # Ghost groups of 4 samples amplify that rounding to ~1e-3 in the first layers' gradients)
    model, cfg = _model(tiny_cfg, *norm.split())
    model.double()
    ref = copy.deepcopy(model)
    net = prepare_training_model(model, _train_cfg(channels_last=True), "cpu")
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x, y = _data()
    x = x.double()
    for _ in range(2):  # the second step uses the first step's running statistics
        for a, b in zip(_step(net, model, x, y), _step(ref, ref, x, y), strict=True):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


def test_bf16_autocast_keeps_bn_statistics_and_logits_in_float32(tiny_cfg):
    model, cfg = _model(tiny_cfg, "norm.nbs=4")
    ref = copy.deepcopy(model)
    net = prepare_training_model(model, _train_cfg(autocast="bf16"), "cpu")
    x, y = _data()
    assert net(x).dtype == torch.float32 and ref(x).dtype == torch.float32  # one forward each
    loss, grads, buffers = _step(net, model, x, y)
    loss_ref, grads_ref, buffers_ref = _step(ref, ref, x, y)
    assert all(b.dtype in (torch.float32, torch.long) for b in model.buffers())
    torch.testing.assert_close(loss, loss_ref, atol=2e-2, rtol=2e-2)  # bf16 has 8 bits of mantissa
    for b, b_ref in zip(buffers, buffers_ref, strict=True):
        if b.is_floating_point():
            torch.testing.assert_close(b, b_ref, atol=1e-3, rtol=1e-2)


def test_bad_fast_path_values_name_the_key(tiny_cfg):
    model, _ = _model(tiny_cfg)
    with pytest.raises(ConfigError, match="train.autocast"):
        prepare_training_model(model, _train_cfg(autocast="fp8"), "cpu")
    with pytest.raises(ConfigError, match="train.compile"):
        prepare_training_model(model, _train_cfg(compile="yes"), "cpu")


@pytest.mark.e2e  # two runs
def test_a_run_with_channels_last_and_bf16_completes_close_to_the_plain_run(tiny_cfg):
    plain = run(tiny_cfg("train.epochs=1"))
    fast = run(tiny_cfg("train.epochs=1", "train.channels_last=true", "train.autocast=bf16"))
    assert plain["status"] == fast["status"] == "completed" and plain["run_id"] != fast["run_id"]
    assert abs(plain["final"]["train_loss"] - fast["final"]["train_loss"]) < 0.1


@pytest.mark.slow
def test_compiled_training_step_matches_eager_and_eval_stays_eager(tiny_cfg):
    model, _ = _model(tiny_cfg, "norm.nbs=4", "model.width=0.25")
    ref = copy.deepcopy(model)
    net = prepare_training_model(model, _train_cfg(compile=True), "cpu")
    x, y = _data()
    t0 = time.time()
    for _ in range(2):
        for a, b in zip(_step(net, model, x, y), _step(ref, ref, x, y), strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)
    print(f"compile + 2 steps: {time.time() - t0:.1f} s")
    model.eval(), ref.eval()
    with torch.no_grad():  # evaluation uses the eager module (inductor's eval-mode BN folding is avoided)
        torch.testing.assert_close(model(x), ref(x), atol=1e-4, rtol=1e-3)


def test_fast_forward_passes_domain_ids_to_the_model():
    """Separate BN takes (x, domain ids); the fast paths passed only x (bf16 + norm=separate crashed, issue 22)."""
    from bnlab.train.fast import FastForward

    class TakesDomains(torch.nn.Module):
        def forward(self, x, domains):
            return x.flatten(1)[:, :10] + domains[:, None].to(x.dtype)

    x, _ = _data(4)
    domains = torch.tensor([0, 1, 0, 1])
    for channels_last, autocast in ((True, None), (False, "bf16")):
        out = FastForward(TakesDomains(), channels_last, autocast, "cpu")(x, domains)
        assert out.dtype == torch.float32 and torch.allclose(out, x.flatten(1)[:, :10] + domains[:, None], atol=0.1)


@pytest.mark.parametrize(
    ("autocast", "flags", "noted"),
    [
        ("bf16", {"avx2"}, True),
        ("bf16", {"avx2", "avx512_bf16"}, False),
        ("fp16", {"amx_bf16"}, True),
        (None, set(), False),
    ],
)
def test_half_precision_on_a_cpu_without_its_units_says_it_is_slow(monkeypatch, capsys, autocast, flags, noted):
    """bf16/fp16 autocast on a CPU that lacks the units runs reference kernels (7-20x slower in the bench): one line
    says so before training; the run still goes ahead (it is valid, only slow)."""
    import bnlab.train.fast as fast

    monkeypatch.setattr(fast, "cpu_flags", lambda: flags)
    fast.check_fast_settings(OmegaConf.create({"autocast": autocast}), "cpu")
    err = capsys.readouterr().err
    assert (f"train.autocast={autocast}" in err) == noted, err
    assert err.count("\n") == int(noted)


def test_this_machines_cpu_flags_are_read():
    from bnlab.utils.provenance import cpu_flags

    flags = cpu_flags()
    assert flags is None or "sse2" in flags or not any(f.startswith("avx") for f in flags)
