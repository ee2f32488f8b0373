"""The training step never waits for the host: no read of a tensor's value (`.item()`, `.tolist()`, `.cpu()`,
`bool(t)`, ...) and no tensor made from host data (a blocking host-to-device copy on a GPU) between logging points.

Counted on CPU by a TorchFunctionMode around the real training loop (`train_one_epoch` of a built job); the loader
is wrapped only to know which step is running. What a GPU itself reports (torch.cuda.set_sync_debug_mode) is
checked in tests/test_cuda.py.
"""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from bnlab.train.build import build
from bnlab.train.fast import prepare_training_model
from bnlab.train.loop import train_one_epoch

T = torch.Tensor
HOST_READS = {T.item, T.tolist, T.cpu, T.numpy, T.__bool__, T.__float__, T.__int__, T.__index__}
FROM_HOST = {torch.as_tensor, torch.tensor, torch.from_numpy}


class HostTraffic(TorchFunctionMode):
    """Counts host reads and host-to-device tensors (and `.to(device)` moves) per training step."""

    def __init__(self):
        super().__init__()
        self.step, self.per_step = -1, {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        to_device = any(isinstance(a, str | torch.device) for a in args[1:]) or "device" in kwargs
        moves = func in (T.to, T.cuda) and to_device
        if func in HOST_READS or func in FROM_HOST or moves:
            self.per_step.setdefault(self.step, []).append(getattr(func, "__name__", str(func)))
        return func(*args, **kwargs)


class _Watched:
    """The job's training loader, telling `traffic` which step the loop is in (the fetch of batch i + 1 counts
    to step i: it is part of the step loop)."""

    def __init__(self, loader, traffic: HostTraffic):
        self.loader, self.traffic, self.device = loader, traffic, loader.device

    def set_epoch(self, epoch):
        self.loader.set_epoch(epoch)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            self.traffic.step = i
            yield batch


def host_traffic_per_step(cfg) -> dict[int, list[str]]:
    job = build(cfg, "cpu")
    net = prepare_training_model(job.model, cfg.train, "cpu")
    traffic = HostTraffic()
    with traffic:
        loader = _Watched(job.data.train, traffic)
        train_one_epoch(net, loader, job.loss_fn, job.optimizer, job.schedule, 0, False, check_every=100)
    return traffic.per_step


@pytest.mark.parametrize(
    "overrides",
    [
        ["data.crop_padding=2", "data.flip=true"],  # augmentation on the device
        ["norm.nbs=8"],  # Ghost BN
        ["norm.nbs=8", "train.channels_last=true"],
        ["norm.momentum=null"],  # BN's cumulative average: weight 1/n from the count kept on the host
        ["norm=separate", "norm.momentum=null", "domains=shifted", "domains.train_on=mixed"],  # ids per sample
    ],
    ids=["augment", "ghost", "ghost-channels-last", "bn-cumulative", "separate-mixed-domains"],
)
def test_no_host_traffic_between_logging_points(tiny_cfg, overrides):
    per_step = host_traffic_per_step(tiny_cfg("train.batches_per_epoch=5", *overrides))
    last = 4  # the logging point: the epoch's last step reads its loss
    between = {step: calls for step, calls in per_step.items() if 0 <= step < last}
    assert between == {}, f"host reads / copies inside the step: {between}"
    assert per_step.get(last), "the counter saw the logging point's reads (it counts what it should)"
