"""BN health for a model bnlab did not build: `diagnose` names each cause on a small plain-PyTorch model built to
have it, leaves the model as it found it, uses the thresholds of conf/train.yaml without Hydra, and runs inside a
plain training loop (BNHealthHook) and Lightning (BNHealthCallback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bnlab import CONF_DIR, REPO_ROOT
from bnlab.diagnostics import BNHealthHook, HealthConfig, HealthInputError, diagnose
from bnlab.norm.batchnorm import BatchNorm2d as BnlabBatchNorm2d
from bnlab.norm.renorm import BatchRenorm2d

CE = nn.functional.cross_entropy


def test_dataclass_defaults_equal_conf_train_yaml():
    yaml = OmegaConf.to_container(OmegaConf.load(f"{CONF_DIR}/train.yaml").health)
    assert asdict(HealthConfig()) == yaml  # same keys, same values: the two homes of the defaults cannot drift
    assert HealthConfig.from_cfg() == HealthConfig()


# --- one plain-PyTorch model per cause: conv -> ReLU -> BN -> pooled read-out; 16 images of 2 x 4 x 4 ----------
def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 2, 1), nn.ReLU(), nn.BatchNorm2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2)
    )
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        net[0].bias.zero_()
        net[5].weight.copy_(torch.tensor([[4.0, 4.0], [-4.0, -4.0]]))
        net[5].bias.zero_()
    return net


def _labelled(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x, (x.mean((1, 2, 3)) < 0).long()


def _ema(model, batches, steps: int) -> None:
    """Train-mode forward passes only: the running statistics move exactly as in training."""
    model.train()
    with torch.no_grad():
        for i in range(steps):
            model(batches[i % len(batches)][0])
    model.eval()


def test_channel_dead_in_training_and_alive_at_validation_is_collapsed_variance():
    g = torch.Generator().manual_seed(0)
    net = _net()
    train = []
    for _ in range(8):
        x = torch.randn(16, 2, 4, 4, generator=g)
        x[:, 1] = -x[:, 1].abs()  # channel 1 is negative on every training image: zero after the ReLU ...
        train.append(_labelled(x))
    val = [_labelled(torch.randn(16, 2, 4, 4, generator=g)) for _ in range(4)]  # ... and alive on validation
    _ema(net, train, 1000)  # 0.9^n reaches the float32 fixed point 4 x 2^-149 = 5.6e-45
    assert net[2].running_var[1].item() == 4 * 2.0**-149

    x, y = torch.cat([b[0] for b in train]), torch.cat([b[1] for b in train])
    vx, vy = torch.cat([b[0] for b in val]), torch.cat([b[1] for b in val])
    report = diagnose(net, DataLoader(TensorDataset(x, y), 16), DataLoader(TensorDataset(vx, vy), 16), CE)
    assert report.causes == ["collapsed_variance"]
    (layer,) = report.events[0]["layers"]
    assert layer["layer"] == "2" and layer["channels"] == [1] and layer["val_z"][0] > 100
    pc = report.layers["2"]["per_channel"]
    assert pc["dead_train"] == [1] and pc["denormal_var"] == [1] and pc["running_var"][1] == 4 * 2.0**-149
    assert report.gap_kind == "loss" and report.gap > 1
    assert any("larger eps" in t for t in report.events[0]["try"])
    text = report.text()
    assert "collapsed variance" in text and "channel 1: running_var 5.61e-45" in text

    no_loss = diagnose(net, train, [b[0] for b in val])  # tensors only, no loss: the predictions' KL divergence
    assert no_loss.causes == ["collapsed_variance"] and no_loss.gap_kind == "kl" and no_loss.gap > 1


def test_running_statistics_far_from_the_batch_statistics_are_stale_ema():
    g = torch.Generator().manual_seed(1)
    net = _net()
    batches = [_labelled(torch.randn(16, 2, 4, 4, generator=g)) for _ in range(8)]
    _ema(net, batches, 200)
    with torch.no_grad():  # as if the weights had moved and the EMA had not followed
        net[2].running_mean.add_(3.0)
        net[2].running_var.mul_(20.0)
    report = diagnose(net, batches, batches[4:], CE)
    assert report.causes == ["stale_ema"] and report.gap > 0.25
    assert report.events[0]["layers"][0]["layer"] == "2"
    assert any("Precise BN" in t for t in report.events[0]["try"])
    assert "stale EMA" in report.text()
    assert report.precise["gap"] < 0.05  # Precise BN (on a copy) closes the gap: the EMA was the problem
    assert net[2].running_mean.mean() > 2.5  # and the model's own statistics are as they were

    # a gap no single layer explains (thresholds out of reach) but Precise BN closes: still a stale EMA
    lax = {"discrepancy_threshold": 1e9, "log_var_threshold": 1e9, "channel_z_threshold": 1e9}
    report = diagnose(net, batches, batches[4:], CE, channel_log_var_threshold=1e9, **lax)
    assert report.causes == ["stale_ema"] and report.events[0]["layers"][0]["precise_gap"] < 0.05
    assert diagnose(net, batches, batches[4:], CE, precise=False, channel_log_var_threshold=1e9, **lax).ok


def test_non_iid_batches_are_batch_composition():
    g = torch.Generator().manual_seed(2)
    net = nn.Sequential(nn.BatchNorm2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
    with torch.no_grad():
        net[3].weight.copy_(torch.tensor([[4.0, 4.0], [-4.0, -4.0]]))
        net[3].bias.zero_()

    def composed(i):  # each batch from one of two domains (offset +-3); the label is relative to the domain
        x = torch.randn(16, 2, 4, 4, generator=g)
        return x + (3.0 if i % 2 else -3.0), (x.mean((1, 2, 3)) < 0).long()

    train, val = [composed(i) for i in range(8)], [composed(i) for i in range(4)]
    _ema(net, train, 400)  # a converged EMA: on the batches' average
    report = diagnose(net, train, val, CE, batches=4)
    assert report.causes == ["batch_composition"] and report.precise["gap"] > 0.25  # no EMA fix helps
    assert any("i.i.d." in t for t in report.events[0]["try"])


def test_iid_batches_and_a_converged_ema_give_no_event():
    g = torch.Generator().manual_seed(3)
    net = _net()
    batches = [_labelled(torch.randn(16, 2, 4, 4, generator=g)) for _ in range(8)]
    _ema(net, batches, 400)
    report = diagnose(net, batches, batches[:4], CE)
    assert report.ok and "BN health: no event" in report.text() and report.row["health/stale_ema"] == 0


def test_input_errors_are_named():
    net = _net()
    with pytest.raises(HealthInputError, match="at least one training batch"):
        diagnose(net, [], None)
    with pytest.raises(HealthInputError, match="needs validation batches with targets"):
        diagnose(net, [torch.randn(4, 2, 4, 4)], [torch.randn(4, 2, 4, 4)], CE)
    with pytest.raises(TypeError, match="gap_treshold"):
        diagnose(net, [torch.randn(4, 2, 4, 4)], gap_treshold=1)


# --- leave the model as found -------------------------------------------------------------------------------
def _zoo() -> nn.Module:
    """Every kind of BN-like layer, dropout, mixed train/eval submodules."""
    torch.manual_seed(0)
    return nn.ModuleDict(
        {
            "c": nn.Conv2d(3, 4, 3, padding=1),
            "bn2": nn.BatchNorm2d(4),
            "sync": nn.SyncBatchNorm(4),
            "mine": BnlabBatchNorm2d(4),
            "brn": BatchRenorm2d(4, warmup_steps=0, r_max_full_at=0, d_max_full_at=0),
            "drop": nn.Dropout(0.5),
            "bn3": nn.BatchNorm3d(4),
            "bn1": nn.BatchNorm1d(4),
            "fc": nn.Linear(4, 3),
        }
    )


class Zoo(nn.Module):
    def __init__(self):
        super().__init__()
        self.m = _zoo()

    def forward(self, x):
        m = self.m
        h = m["brn"](m["mine"](m["sync"](m["bn2"](m["c"](x)).relu())))
        h = m["bn3"](m["drop"](h).unsqueeze(2)).squeeze(2)
        return m["fc"](m["bn1"](h.mean((2, 3))))


def _state(model: nn.Module) -> dict:
    return {
        "modes": [(n, m.training) for n, m in model.named_modules()],
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "grads": {n: (p.grad, p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters()},
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }


def _assert_same(before: dict, model: nn.Module) -> None:
    after = _state(model)
    assert after["modes"] == before["modes"]
    for n, b in before["buffers"].items():
        assert after["buffers"][n].dtype == b.dtype and torch.equal(after["buffers"][n], b), n
    for n, p in before["params"].items():
        assert torch.equal(after["params"][n], p), n
    for n, (ref, val) in before["grads"].items():
        grad = dict(model.named_parameters())[n].grad
        assert grad is ref and (val is None or torch.equal(grad, val)), n
    assert torch.equal(after["rng"], before["rng"])
    if before["cuda_rng"] is not None:
        assert torch.equal(after["cuda_rng"], before["cuda_rng"])


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))],
)
def test_diagnosis_leaves_the_model_as_found(device):
    model = Zoo().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(6)]
    model.train()
    for x, y in batches[:3]:  # a few real steps: moved statistics, counters > 0, gradients present
        opt.zero_grad()
        CE(model(x.to(device)), y.to(device)).backward()
        opt.step()
    model.m["bn2"].eval()  # mixed modes: a frozen layer inside a training model
    model.m["fc"].weight.grad = None  # and a parameter without a gradient
    before = _state(model)
    assert before["buffers"]["m.bn2.num_batches_tracked"].item() == 3

    report = diagnose(model, batches, batches[3:], CE)  # CPU batches: moved to the model's device
    _assert_same(before, model)
    assert set(report.layers) == {"m.bn2", "m.sync", "m.mine", "m.brn", "m.bn3", "m.bn1"}

    model.eval()
    before = _state(model)
    diagnose(model, batches, [x for x, _ in batches[3:]])
    _assert_same(before, model)


# --- in a plain training loop -------------------------------------------------------------------------------
def _loop(hook, steps: int = 6):
    g = torch.Generator().manual_seed(4)
    net = hook.model
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for step in range(steps):
        x, y = _labelled(torch.randn(16, 2, 4, 4, generator=g))
        net.train()
        opt.zero_grad()
        CE(net(x), y).backward()
        opt.step()
        hook.step(step, (x, y))


def test_hook_logs_every_n_steps_to_a_callable_then_wandb_then_print(monkeypatch, capsys):
    g = torch.Generator().manual_seed(5)
    val = [_labelled(torch.randn(16, 2, 4, 4, generator=g)) for _ in range(2)]
    logged = []
    hook = BNHealthHook(_net(), val, every=2, log=lambda m, step: logged.append((step, m)), loss_fn=CE)
    _loop(hook)
    assert [s for s, _ in logged] == [2, 4]
    assert {"health/running_var_min", "health/eval_train_loss_gap", "health/stale_ema"} <= set(logged[0][1])
    assert hook.model.training and hook.last is not None

    class Run:
        calls = []

        def log(self, metrics, commit=True):
            self.calls.append((metrics, commit))

    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(run=Run()))
    hook = BNHealthHook(_net(), val, every=3)
    _loop(hook)
    assert len(Run.calls) == 1 and Run.calls[0][1] is False and Run.calls[0][0]["health/step"] == 3

    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(run=None))  # wandb imported, no active run
    hook = BNHealthHook(_net(), val, every=5)
    _loop(hook)
    assert "[bn-health] step 5:" in capsys.readouterr().out


def test_hook_reports_a_collapsed_channel_as_an_event_with_its_step():
    g = torch.Generator().manual_seed(6)
    net = _net()
    train = []
    for _ in range(4):
        x = torch.randn(16, 2, 4, 4, generator=g)
        x[:, 1] = -x[:, 1].abs()
        train.append(_labelled(x))
    _ema(net, train, 1000)
    val = [_labelled(torch.randn(16, 2, 4, 4, generator=g)) for _ in range(2)]
    hook = BNHealthHook(net, val, every=1, log=lambda m, step: None)
    for step, b in enumerate(train):
        hook.step(step, b)
    assert [(e["cause"], e["step"]) for e in hook.events] == [("collapsed_variance", s) for s in (1, 2, 3)]


# --- the global RNG, with DataLoaders that shuffle (issue 33) --------------------------------------------------
def _shuffled(seed: int, n: int = 64) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(*_labelled(torch.randn(n, 2, 4, 4, generator=g))), batch_size=16, shuffle=True)


def _rng() -> tuple:
    import random

    import numpy as np

    return torch.get_rng_state(), random.getstate(), np.random.get_state()[1].tolist()


def test_diagnose_with_shuffling_dataloaders_leaves_the_global_rng_as_found():
    """The README's call, diagnose(model, train_loader, val_loader): each loader draws its shuffle seed from the
    global generator when read, which must not show outside."""
    net, train, val = _net(), _shuffled(1), _shuffled(2)
    before = _rng()
    diagnose(net, train, val, loss_fn=CE)
    after = _rng()
    assert torch.equal(after[0], before[0]) and after[1:] == before[1:]


def _train_with(hook_factory, steps: int = 12) -> dict:
    torch.manual_seed(3)
    net = _net()
    hook = hook_factory(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loader = _shuffled(9)
    step = 0
    while step < steps:
        for x, y in loader:  # each pass reshuffles from the global generator
            net.train()
            opt.zero_grad()
            CE(net(x), y).backward()
            opt.step()
            step += 1
            if hook is not None:
                hook.step(step, (x, y))
            if step == steps:
                break
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_a_loop_with_the_hook_on_a_shuffled_loader_ends_with_the_weights_it_has_without():
    without = _train_with(lambda net: None)
    with_hook = _train_with(lambda net: BNHealthHook(net, _shuffled(2), every=4, log=lambda m, step: None, loss_fn=CE))
    assert with_hook.keys() == without.keys()
    assert all(torch.equal(with_hook[k], without[k]) for k in without)


def test_the_lightning_callback_reading_the_trainers_shuffled_loader_leaves_the_rng_as_found():
    """The callback's logic (no Lightning needed): it reads trainer.val_dataloaders when the hook starts."""
    from bnlab.diagnostics import lightning_callback as lc

    trainer = SimpleNamespace(global_step=0, loggers=[], val_dataloaders=[_shuffled(2)])
    cb = lc._HealthCallbackLogic(every_n_steps=1, loss_fn=CE)
    net, batch = _net(), _labelled(torch.randn(16, 2, 4, 4))
    before = _rng()
    trainer.global_step = 1
    cb.on_train_batch_end(trainer, net, None, batch, 1)  # starts the hook (reads the loader), then diagnoses
    after = _rng()
    assert cb.hook is not None and cb.hook.last is not None
    assert torch.equal(after[0], before[0]) and after[1:] == before[1:]


# --- PyTorch Lightning --------------------------------------------------------------------------------------
def _has_lightning() -> bool:
    try:
        import lightning  # noqa: F401
    except ImportError:
        return False
    return True


def test_lightning_callback_module_imports_without_lightning_and_its_logic_logs_to_the_trainers_loggers():
    from bnlab.diagnostics import lightning_callback as lc

    if not lc.LIGHTNING:
        with pytest.raises(ImportError, match=r"bnlab\[lightning\]"):
            lc.BNHealthCallback()
    logged = []
    logger = SimpleNamespace(log_metrics=lambda metrics, step: logged.append((step, metrics)))
    g = torch.Generator().manual_seed(7)
    val = [_labelled(torch.randn(16, 2, 4, 4, generator=g)) for _ in range(2)]
    trainer = SimpleNamespace(global_step=0, loggers=[logger], val_dataloaders=[DataLoader(TensorDataset(*val[0]), 8)])
    cb = lc._HealthCallbackLogic(every_n_steps=2, loss_fn=CE)
    net = _net()
    for step in range(1, 5):
        trainer.global_step = step
        cb.on_train_batch_end(trainer, net, None, _labelled(torch.randn(16, 2, 4, 4, generator=g)), step)
    assert [s for s, _ in logged] == [2, 4] and "health/running_var_min" in logged[0][1]


@pytest.mark.skipif(not _has_lightning(), reason="lightning not installed (pip install 'bnlab[lightning]')")
def test_lightning_callback_in_a_trainer(tmp_path):
    import lightning as L

    from bnlab.diagnostics.lightning_callback import BNHealthCallback

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return CE(self(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    g = torch.Generator().manual_seed(8)
    x = torch.randn(96, 2, 4, 4, generator=g)
    y = (x.mean((1, 2, 3)) < 0).long()
    loader = DataLoader(TensorDataset(x, y), 16)
    cb = BNHealthCallback(val_data=list(loader)[:2], every_n_steps=2, loss_fn=CE)
    trainer = L.Trainer(
        max_steps=6, callbacks=[cb], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        default_root_dir=tmp_path, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(Module(), loader)
    assert cb.hook is not None and cb.hook.last is not None and cb.hook._fired == 6


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Fashion-MNIST not installed")
def test_the_forum_example_runs(tmp_path):
    """examples/diagnose_foreign_model.py end to end, shortened (the README shows its full 1200-step output)."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / "diagnose_foreign_model.py"), "--steps", "30",
         "--json", str(tmp_path / "r.json")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "blocks.3.bn_dw" in proc.stdout and json.loads((tmp_path / "r.json").read_text())["layers"]
