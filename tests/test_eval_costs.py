"""Evaluation costs that are counted: `bnlab plan` prices every eval mode, and ema_frozen's EMA re-run (every step
trained so far, at every epoch: quadratic in the schedule) can be capped (eval.ema_frozen_steps) to make it linear."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bnlab.cost import ema_frozen_replays, eval_images_per_epoch, job_cost
from bnlab.norm import frozen_ema
from bnlab.train.evaluate import EVAL_MODES
from conftest import TINY, compose_cfg


def _cfg(*overrides):
    return compose_cfg([*TINY, "health.enabled=false", *overrides])


@pytest.mark.parametrize("mode", EVAL_MODES)
def test_plan_prices_every_eval_mode(mode):
    none = job_cost(_cfg("eval.modes=[]"))
    cost = job_cost(_cfg(f"eval.modes=[{mode}]"))
    assert cost.flops > none.flops  # the mode's forwards are in the plan
    if mode in ("precise", "adaptive", "ema_frozen"):  # statistics recomputed first: more than one pass of val
        assert cost.flops - none.flops > (job_cost(_cfg("eval.modes=[running]")).flops - none.flops) * 1.1


def test_ema_frozen_replay_is_quadratic_in_epochs_unless_capped():
    micro = 8  # 512 images / batch 64
    full = [ema_frozen_replays(_cfg("eval.modes=[ema_frozen]", f"train.epochs={e}"), micro) for e in (10, 20)]
    assert full == [micro * 55, micro * 210]  # sum of e * micro over the epochs
    capped = [
        ema_frozen_replays(_cfg("eval.modes=[ema_frozen]", f"train.epochs={e}", "eval.ema_frozen_steps=16"), micro)
        for e in (10, 20)
    ]
    assert capped == [8 + 16 * 9, 8 + 16 * 19]  # linear: at most 16 batches an epoch
    assert ema_frozen_replays(_cfg("eval.modes=[running,precise]"), micro) == 0
    assert eval_images_per_epoch(_cfg("eval.modes=[ema_frozen]"), 512, 256) == 256  # + the replay, priced apart


def _trained_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, momentum=0.3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    model.append(nn.BatchNorm2d(4, momentum=0.3))
    batches = [torch.randn(8, 1, 6, 6) * (1 + i) for i in range(5)]
    model.train()
    for x in batches * 4:  # 20 steps of "training"
        model(x)
    return model, batches


def test_ema_frozen_cap_at_or_above_the_steps_is_the_full_replay_and_below_it_stops_early():
    model, batches = _trained_model()
    full, capped, short = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(model)
    assert frozen_ema(full, batches) == 20
    assert frozen_ema(capped, batches, max_steps=20) == 20
    assert all(torch.equal(a, b) for a, b in zip(full.buffers(), capped.buffers()))  # bitwise
    assert frozen_ema(short, batches, max_steps=7) == 7
    # momentum 0.3: after 7 steps the initial value still weighs 0.7^7 = 8%: a visibly different EMA
    assert not torch.allclose(full[1].running_var, short[1].running_var)
