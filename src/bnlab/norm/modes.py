"""Running a model in another train/eval mode without side effects: the mode switch, and buffers put back after.

Batch-statistics evaluation and the BN health monitor both run a model in training mode on batches that must not
move its running statistics; this is the one place that knows how (restore every buffer, restore the mode).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def preserved_buffers(model: torch.nn.Module):
    """Every buffer (running statistics, counters) is restored on exit, whatever ran inside."""
    saved = {name: buf.detach().clone() for name, buf in model.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, buf in model.named_buffers():
                buf.copy_(saved[name])


@contextmanager
def mode(model: torch.nn.Module, train: bool):
    """`model.train(train)` inside, the previous mode on exit."""
    was_training = model.training
    model.train(train)
    try:
        yield
    finally:
        model.train(was_training)
