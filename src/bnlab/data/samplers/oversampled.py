"""Oversampling rare classes: every batch is drawn with replacement from per-class target shares (the forum
setup of claim C4: "an epoch = 250 batches of 40 ... rare classes oversampled").

`class_weights` sets the share p_c of class c among the drawn images; an image of class c is drawn with
probability p_c / n_c (what torch's WeightedRandomSampler does with per-sample weights p_c / n_c):
  - balanced: p_c equal for all present classes (per-image weight 1 / n_c);
  - inverse_power: per-image weight (1 / n_c) ** power, so p_c ~ n_c ** (1 - power); 0 = natural, 1 = balanced;
  - a list [w_0, ..., w_{C-1}]: p_c ~ w_c, explicitly.
On a balanced dataset these all look alike: combine with `data.imbalance` to make the training set imbalanced.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bnlab.config_errors import ConfigError
from bnlab.utils.seeding import epoch_seed

WEIGHTINGS = ("balanced", "inverse_power")


def check_oversampled_config(cfg, prefix: str = "sampler") -> None:
    weights = cfg.get("class_weights", "balanced")
    if isinstance(weights, str):
        if weights not in WEIGHTINGS:
            raise ConfigError(f"{prefix}.class_weights", f"got {weights!r}", allowed=[*WEIGHTINGS, "[w_0, ..., w_C-1]"])
    elif not isinstance(weights, Sequence) or not all(
        isinstance(w, int | float) and not isinstance(w, bool) and w >= 0 for w in weights
    ):
        raise ConfigError(f"{prefix}.class_weights", f"a list needs non-negative numbers, got {weights!r}")
    power = cfg.get("power", 1.0)
    if not isinstance(power, int | float) or isinstance(power, bool):
        raise ConfigError(f"{prefix}.power", f"must be a number, got {power!r}")


def class_shares(labels: torch.Tensor, class_weights, power: float = 1.0) -> torch.Tensor:
    """Target share p_c of each class (index = label) among drawn images; 0 for absent classes."""
    counts = torch.bincount(labels, minlength=len(class_weights) if not isinstance(class_weights, str) else 0).double()
    present = counts > 0
    if class_weights == "balanced":
        shares = present.double()
    elif class_weights == "inverse_power":
        shares = torch.where(present, counts.clamp(min=1) ** (1.0 - power), 0.0)
    else:
        shares = torch.as_tensor(list(class_weights), dtype=torch.float64)
        if len(shares) != len(counts):
            raise ConfigError("sampler.class_weights", f"{len(shares)} weights for {len(counts)} classes")
        absent = [c for c in range(len(counts)) if shares[c] > 0 and not present[c]]
        if absent:
            raise ConfigError("sampler.class_weights", f"positive weight for class(es) {absent} with no images")
    if shares.sum() <= 0:
        raise ConfigError("sampler.class_weights", "all weights are zero")
    return shares / shares.sum()


class OversampledBatchSampler:
    def __init__(
        self,
        labels,
        batch_size: int,
        seed: int = 0,
        batches_per_epoch: int | None = None,
        class_weights="balanced",
        power: float = 1.0,
    ):
        check_oversampled_config({"class_weights": class_weights, "power": power})
        self.labels = torch.as_tensor(labels).cpu().long()
        self.n, self.batch_size, self.seed = len(self.labels), batch_size, seed
        self.batches_per_epoch = batches_per_epoch
        self.epoch = 0
        self.shares = class_shares(self.labels, class_weights, float(power))
        counts = torch.bincount(self.labels, minlength=len(self.shares)).double()
        self.sample_weights = (self.shares / counts.clamp(min=1))[self.labels]  # p_c / n_c for each image

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch or max(1, self.n // self.batch_size)

    def __iter__(self):
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        draws = torch.multinomial(self.sample_weights, len(self) * self.batch_size, replacement=True, generator=gen)
        yield from draws.view(len(self), self.batch_size).tolist()
