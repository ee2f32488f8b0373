"""Gradient accumulation: k micro-batches per optimizer step (`train.accumulate=k`).

Wu, "Devils in BatchNorm" ("Implementations: Accumulate Gradients"): to keep the normalization batch size while
changing the SGD batch, save gradients and update the model once in a while. Each micro-batch of
`train.batch_size` samples is a separate forward, so BN normalizes it with its own statistics (NBS unchanged) and
moves the running statistics once per micro-batch (k EMA updates per optimizer step; with momentum m the EMA
forgets (1 - m)^k per step instead of (1 - m)). The loss of each micro-batch is divided by k, so the accumulated
gradient is the gradient of the mean loss over the k * batch_size samples: with a batch-independent norm
(GroupNorm, LayerNorm, none) one step equals one step on the k-times-larger batch. A last group with fewer than
k micro-batches (end of an epoch) is rescaled to the mean over the micro-batches it has.
"""

from __future__ import annotations

import torch


def optimizer_steps(micro_batches: int, accumulate: int) -> int:
    """Optimizer steps in an epoch of `micro_batches` micro-batches (a partial last group counts as one)."""
    return -(-micro_batches // accumulate)


class GradientAccumulator:
    """`backward(loss)` once per micro-batch; it steps the optimizer and the LR schedule every `accumulate` calls
    and after the epoch's last micro-batch. Returns True when it stepped."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule, accumulate: int, micro_batches: int, scaler=None):
        if not isinstance(accumulate, int) or accumulate < 1:
            raise ValueError(f"accumulate must be a positive integer, got {accumulate!r}")
        self.optimizer, self.schedule, self.k = optimizer, schedule, accumulate
        self.scaler = scaler  # torch.amp.GradScaler under fp16 autocast (train/fast.py), else None
        self.micro_batches, self.seen, self.pending = micro_batches, 0, 0

    def backward(self, loss: torch.Tensor) -> bool:
        if self.pending == 0:
            self.optimizer.zero_grad(set_to_none=True)
        loss = loss / self.k if self.k > 1 else loss
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        self.pending += 1
        self.seen += 1
        if self.pending < self.k and self.seen < self.micro_batches:
            return False
        if self.scaler is not None and self.pending < self.k:
            self.scaler.unscale_(self.optimizer)  # the rescale below acts on true gradients
        if self.pending < self.k:  # short last group: the mean over the micro-batches it has
            with torch.no_grad():
                for group in self.optimizer.param_groups:
                    for p in group["params"]:
                        if p.grad is not None:
                            p.grad.mul_(self.k / self.pending)
        if self.scaler is not None:  # skips the step when fp16 gradients overflowed, then adapts the scale
            # one host read a step stays here: GradScaler.step reads the overflow flag to decide whether to step. The
            # fused optimizers that skip on the device instead leave a skipped first step's momentum uninitialised
            # (torch 2.14, SGD(fused=True) with found_inf set) and round updates differently; bf16 needs no scaler
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.schedule.step_batch()
        self.pending = 0
        return True
