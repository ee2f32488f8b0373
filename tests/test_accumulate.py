"""train.accumulate: k micro-batches per optimizer step keep the NBS and multiply the SGD batch by k."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnlab.norm import BatchNorm2d
from bnlab.runner import run
from bnlab.train.accumulate import GradientAccumulator, optimizer_steps
from bnlab.train.checkpoint import load_checkpoint
from bnlab.train.run_dir import RunDir, run_id


class NoSchedule:
    steps = 0

    def step_batch(self):
        self.steps += 1


def small_net(norm) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), norm(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)
    ).double()


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)


def data(n=24):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 5, (n,), generator=g)


@pytest.mark.parametrize("k", [2, 3])
def test_group_norm_k_micro_batches_equal_one_step_on_the_k_times_larger_batch(k):
    x, y = data(8 * k)
    big, micro = small_net(lambda c: nn.GroupNorm(4, c)), small_net(lambda c: nn.GroupNorm(4, c))
    opt_big, opt_micro = sgd(big), sgd(micro)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(3):  # three optimizer steps, so SGD momentum and weight decay enter too
        opt_big.zero_grad()
        loss_fn(big(x), y).backward()
        opt_big.step()
        stepper = GradientAccumulator(opt_micro, NoSchedule(), k, k)
        stepped = [stepper.backward(loss_fn(micro(xb), yb)) for xb, yb in zip(x.chunk(k), y.chunk(k))]
        assert stepped == [False] * (k - 1) + [True]
    for p, q in zip(big.parameters(), micro.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-12, atol=1e-12)


def test_batch_norm_keeps_the_micro_batch_as_normalization_batch():
    k, b = 3, 8
    x, y = data(k * b)
    model = small_net(lambda c: BatchNorm2d(c, momentum=0.1))
    reference = small_net(lambda c: BatchNorm2d(c, momentum=0.1))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: compare gradients, the weights stay put
    loss_fn = nn.CrossEntropyLoss()
    stepper = GradientAccumulator(opt, NoSchedule(), k, k)
    for xb, yb in zip(x.chunk(k), y.chunk(k)):
        stepper.backward(loss_fn(model(xb), yb))
    bn = model[1]
    assert int(bn.num_batches_tracked) == k  # one EMA update per micro-batch

    # the oracle: each micro-batch normalized by its own statistics, EMA moved once per micro-batch
    expected_mean = torch.zeros(8, dtype=torch.float64)
    grads = [torch.zeros_like(p) for p in reference.parameters()]
    for xb, yb in zip(x.chunk(k), y.chunk(k)):
        h = reference[0](xb)
        expected_mean = 0.9 * expected_mean + 0.1 * h.mean((0, 2, 3))
        reference.zero_grad()
        loss_fn(reference(xb), yb).backward()
        grads = [g + p.grad / k for g, p in zip(grads, reference.parameters())]
    torch.testing.assert_close(bn.running_mean, expected_mean.detach(), rtol=1e-12, atol=1e-12)
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)

    # and it is not BN over the whole k * b batch (NBS k * b): that gradient differs
    whole = small_net(lambda c: BatchNorm2d(c, momentum=0.1))
    loss_fn(whole(x), y).backward()
    diff = max((p.grad - q.grad).abs().max().item() for p, q in zip(model.parameters(), whole.parameters()))
    assert diff > 1e-4


def test_short_last_group_is_the_mean_over_its_micro_batches():
    x, y = data(24)
    a, b = small_net(lambda c: nn.GroupNorm(4, c)), small_net(lambda c: nn.GroupNorm(4, c))
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    schedule = NoSchedule()
    stepper = GradientAccumulator(opt_a, schedule, 2, 3)  # an epoch of 3 micro-batches: steps after 2, then 1
    for xb, yb in zip(x.chunk(3), y.chunk(3)):
        stepper.backward(loss_fn(a(xb), yb))
    assert schedule.steps == 2 == optimizer_steps(3, 2)
    for xs, ys in [(x[:16], y[:16]), (x[16:], y[16:])]:
        opt_b.zero_grad()
        loss_fn(b(xs), ys).backward()
        opt_b.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_run_with_accumulate_matches_the_larger_batch_with_group_norm(tiny_cfg):
    """The real loop: 2 x 32 accumulated == one batch of 64 (same sample order, same LR schedule). float32 and
    a different summation order leave ~1e-5 differences after two steps (the float64 tests above are exact)."""
    states = []
    arms = (["train.batch_size=64"], ["train.batch_size=32", "train.accumulate=2"], ["train.batch_size=32"])
    for overrides in arms:
        cfg = tiny_cfg("norm=group", "train.epochs=1", "health.enabled=false", "data.train_subset=128", *overrides)
        cfg.eval.modes = ["running"]
        summary = run(cfg)
        assert summary["status"] == "completed"
        assert summary["step"] == (4 if overrides == ["train.batch_size=32"] else 2)  # optimizer steps
        states.append(load_checkpoint(RunDir.for_config(cfg).checkpoint)["model"])
    big, accumulated, small = states
    for name, t in big.items():
        torch.testing.assert_close(accumulated[name], t, rtol=0, atol=2e-4, msg=name)
    assert (small["stem.0.weight"] - big["stem.0.weight"]).abs().max() > 1e-2  # what the tolerance rules out


def test_accumulate_default_keeps_run_hashes_and_bad_values_name_the_key(tiny_cfg):
    from omegaconf import open_dict

    from bnlab.config import validate
    from bnlab.config_errors import ConfigError

    cfg, without = tiny_cfg(), tiny_cfg()
    with open_dict(without):
        del without.train["accumulate"]  # a config from before the key existed
    assert run_id(cfg) == run_id(without)
    assert run_id(tiny_cfg("train.accumulate=2")) != run_id(cfg)
    with pytest.raises(ConfigError, match="train.accumulate"):
        validate(tiny_cfg("train.accumulate=0"))
