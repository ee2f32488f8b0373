"""diagnostics/consistency.py against hand-computed references."""

import copy

import torch
from torch import nn

from bnlab.diagnostics.consistency import head_moments, layer_swap, scale_ratio
from bnlab.norm import precise_bn


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(3, 4))  # fmt: skip


def _batches(n=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 2, 5, 5, generator=g) * (1 + i), torch.randint(0, 4, (8,), generator=g)) for i in range(n)]


def test_scale_ratio_is_mean_inverse_batch_sigma_times_running_sigma():
    net, batches = _net(), _batches()
    net[1].running_var.fill_(2.0)
    before = copy.deepcopy(net.state_dict())
    ratio = scale_ratio(net, batches, n_batches=4)["1"]
    conv = net[0]
    inv = torch.stack(
        [(conv(x).transpose(0, 1).flatten(1).var(1, unbiased=False) + 1e-5).rsqrt() for x, _ in batches[:4]]
    )
    torch.testing.assert_close(ratio, inv.mean(0) * (2.0 + 1e-5) ** 0.5, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # nothing moved


def test_head_moments_read_the_classifier_input_in_each_mode():
    net, batches = _net(), _batches()
    net.eval()
    out = head_moments(net, batches, train=False)
    feats = torch.cat([net[:5](x) for x, _ in batches]).detach()
    assert abs(out["mean"] - feats.mean().item()) < 1e-6 and abs(out["var"] - feats.var(unbiased=False).item()) < 1e-6
    train = head_moments(net, batches, train=True)
    assert train != out and not net.training


def test_layer_swap_all_equals_precise_and_one_layer_net_matches():
    net, batches = _net(), _batches()
    loss = nn.CrossEntropyLoss()
    precise = copy.deepcopy(net)
    precise_bn(precise, batches, 40)
    rows = {r["layer"]: r["loss"] for r in layer_swap(net, precise, batches, loss)}
    assert set(rows) == {"(none)", "(all)", "1"}
    assert abs(rows["(all)"] - rows["1"]) < 1e-6  # one BN layer: swapping it is swapping all
    assert rows["(none)"] != rows["(all)"]
