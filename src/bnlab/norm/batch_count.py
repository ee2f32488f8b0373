"""A BN layer's `num_batches_tracked` known on the host, for the cumulative average (`momentum=None`).

The cumulative average weighs the n-th batch by 1/n, and `F.batch_norm` takes that weight as a Python float: read from
the buffer at every step, it is a device-to-host copy that stalls a GPU's queue. Here the count is mirrored on the host
and trusted while the buffer is the same tensor at the same in-place version (`Tensor._version`, bumped by every
in-place change) as when it was last counted: whatever else sets it (load_state_dict, reset_running_stats, Precise BN's
restore, DDP's buffer broadcast each forward) is read once at the next step instead. The weight is the same Python
float as `1.0 / float(num_batches_tracked)`, so CPU results do not change.
"""

from __future__ import annotations

from torch import nn

_MIRROR = "_batches_tracked_on_host"  # (the buffer, its version, its value) when last counted


def _mirrored(module: nn.Module) -> int | None:
    """The host's count of `module.num_batches_tracked` if it still holds, else None."""
    seen, buffer = module.__dict__.get(_MIRROR), module.num_batches_tracked
    if seen is not None and seen[0] is buffer and seen[1] == buffer._version:
        return seen[2]
    return None


def count_batch(module: nn.Module) -> int:
    """num_batches_tracked += 1 on the device; the new count, without reading the device when the mirror holds."""
    before, buffer = _mirrored(module), module.num_batches_tracked
    buffer.add_(1)
    count = before + 1 if before is not None else int(buffer)  # read: first step, or set from elsewhere since
    module.__dict__[_MIRROR] = (buffer, buffer._version, count)
    return count


def batches_tracked(module: nn.Module) -> int:
    """`int(module.num_batches_tracked)`, from the host's mirror when it holds (just counted by `count_batch`)."""
    count = _mirrored(module)
    if count is None:
        count = int(module.num_batches_tracked)
        module.__dict__[_MIRROR] = (module.num_batches_tracked, module.num_batches_tracked._version, count)
    return count


def count_on_host(model: nn.Module) -> None:
    """Read every cumulative-average counter of `model` once, before training, so no step has to."""
    for module in model.modules():
        if getattr(module, "momentum", 0.1) is None:
            for sub in module.modules():  # a layer's own counter, or its parts' (Separate BN's per-domain stats)
                if "num_batches_tracked" in sub._buffers:
                    batches_tracked(sub)
