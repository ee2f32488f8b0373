"""Fast paths of the training step, each a config switch, off unless it measurably helps (results/bench/README.md):

- ``train.channels_last``: model weights and inputs in NHWC memory format (PyTorch's fast conv / BN kernels on
  CPU, tensor cores on GPU).
- ``train.autocast``: ``bf16`` or ``fp16`` mixed precision for the forward pass. BN statistics stay float32:
  every bnlab norm keeps its buffers and statistics in float32 (PyTorch's mixed-type batch-norm kernels), and
  the logits are cast back to float32 before the loss.
- ``train.compile``: ``torch.compile`` of the training forward (inductor, one compile per input shape).
- with ``fp16`` the loss is scaled by a ``torch.amp.GradScaler`` (`grad_scaler`): fp16 gradients underflow to 0
  below 6e-8 without it; bf16 has float32's exponent range and needs none.

Guards against known BN / inductor pitfalls:
- eval-mode BN is folded into constants by inductor, which has produced wrong outputs (pytorch/pytorch#181696,
  #101604): only the training forward is compiled; evaluation, Precise BN and the health monitor run the eager
  module, which shares the parameters and buffers.
- ``momentum=None`` (cumulative average) reads num_batches_tracked as a Python number, which cannot be captured
  with ``fullgraph=True`` (pytorch/pytorch#194504): bnlab compiles with ``fullgraph=False`` so such a layer
  falls back to eager for that step instead of failing.
The loop calls `prepare_training_model` once; everything else stays as it is.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from bnlab.config_errors import ConfigError
from bnlab.norm.batch_count import count_on_host
from bnlab.utils.provenance import cpu_flags

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# x86 flags (/proc/cpuinfo) of CPU units that compute in each half precision; without one, autocast on the CPU runs
# reference kernels: 7-20x slower than fp32 on the AVX2 machine (results/bench/preset_cpu.csv)
HALF_UNITS = {"bf16": {"avx512_bf16", "amx_bf16"}, "fp16": {"avx512_fp16", "amx_fp16"}}


def fast_settings(train_cfg) -> tuple[bool, str | None, bool]:
    """(channels_last, autocast, compile) from the train config, checked; a bad value names its key."""
    channels_last, autocast = train_cfg.get("channels_last", False), train_cfg.get("autocast", None)
    compile_ = train_cfg.get("compile", False)
    for key, value in (("train.channels_last", channels_last), ("train.compile", compile_)):
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}")
    if autocast is not None and autocast not in AUTOCAST_DTYPES:
        raise ConfigError("train.autocast", f"got {autocast!r}", allowed=[None, *AUTOCAST_DTYPES])
    return channels_last, autocast, compile_


def check_fast_settings(train_cfg, device) -> None:
    """Fail before training on a bad value. fp16 autocast runs on CPU too (torch >= 2.4 has CPU float16 autocast
    and a CPU GradScaler): slow there, but it lets the fp16 path, loss scaling and its resume, be tested anywhere."""
    _, autocast, _ = fast_settings(train_cfg)
    flags = cpu_flags() if autocast and torch.device(device).type == "cpu" else None
    if flags is not None and not flags & HALF_UNITS[autocast]:
        print(
            f"[bnlab] note: train.autocast={autocast} on a CPU without {' or '.join(sorted(HALF_UNITS[autocast]))} "
            "runs reference kernels, several times slower than fp32 (results/bench/preset_cpu.csv); "
            "train.autocast=null is the fast choice on this machine",
            file=sys.stderr,
        )


def grad_scaler(train_cfg, device) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 autocast, None otherwise (the accumulator then steps the optimizer directly)."""
    _, autocast, _ = fast_settings(train_cfg)
    if autocast != "fp16":
        return None
    return torch.amp.GradScaler(torch.device(device).type)


class FastForward(nn.Module):
    """The model's training forward with the enabled fast paths; parameters and buffers are the model's own."""

    def __init__(self, model: nn.Module, channels_last: bool, autocast: str | None, device_type: str):
        super().__init__()
        self.model = model
        self.channels_last, self.autocast, self.device_type = channels_last, autocast, device_type

    def forward(self, x, *extra):  # extra: what the model takes after x (per-sample domain ids, data/domains.py)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.autocast is None:
            return self.model(x, *extra)
        with torch.autocast(self.device_type, dtype=AUTOCAST_DTYPES[self.autocast]):
            out = self.model(x, *extra)
        return out.float()  # the loss in float32


def prepare_training_model(net: nn.Module, train_cfg, device) -> nn.Module:
    """The module the loop trains through: `net` itself when every fast path is off (the default)."""
    channels_last, autocast, compile_ = fast_settings(train_cfg)
    check_fast_settings(train_cfg, device)
    count_on_host(net)  # momentum=None layers: their batch counts read now, not in the first step
    if channels_last:
        net.to(memory_format=torch.channels_last)  # in place: the eager model used for evaluation shares it
    if not (channels_last or autocast or compile_):
        return net
    fast = FastForward(net, channels_last, autocast, torch.device(device).type)
    if compile_:
        # dynamic=False: one graph per input shape (the last, smaller batch compiles once more at most)
        return torch.compile(fast, fullgraph=False, dynamic=False)
    return fast
