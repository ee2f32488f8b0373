"""Non-i.i.d. batches of k labels x m images: the "16 x 2" sampler of Ioffe 2017 (Batch Renorm, "Non-i.i.d.
minibatches" experiment, claim C3).

The paper builds each batch of 32 by drawing 16 labels (of 1000) with replacement, then 2 images of each drawn
label; test batches of 50 are drawn the same way (25 x 2). With 10 classes, 16 draws necessarily repeat labels,
so `distinct_labels=True` offers k different labels per batch instead.

`interleave` orders a batch so that a ghost split (ghost BN groups of nbs samples) puts the m images of each
label group into m different normalization groups, the paper's "split each batch into two halves so that each
half holds one image of every pair" arm, for either split layout:
  - contiguous (group g = samples [g*nbs, (g+1)*nbs)): member-major, [1st image of every group, 2nd of every, ...];
    members sit k apart, so they are separated whenever nbs <= k.
  - strided (sample i in group i % (B/nbs)): label-major, the m images of a group adjacent; m consecutive samples
    fall into m different groups whenever m <= B/nbs, i.e. again nbs <= k.
  - none: as drawn, which is label-major (a contiguous split then keeps each label group together).
"""

from __future__ import annotations

import numpy as np
import torch

from bnlab.config_errors import ConfigError
from bnlab.utils.seeding import epoch_seed

INTERLEAVES = ("none", "contiguous", "strided")


def check_label_pair_config(cfg, batch_size: int | None, prefix: str = "sampler", batch_key="train.batch_size"):
    """Raise ConfigError for a bad k / m / interleave; shared by the constructor and config validation."""
    k, m = cfg.get("labels_per_batch"), cfg.get("images_per_label")
    for key, v in (("labels_per_batch", k), ("images_per_label", m)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ConfigError(f"{prefix}.{key}", f"must be a positive integer, got {v!r}")
    if batch_size is not None and k * m != batch_size:
        raise ConfigError(
            f"{prefix}.labels_per_batch",
            f"{prefix}.labels_per_batch x {prefix}.images_per_label = {k} x {m} = {k * m} "
            f"must equal {batch_key} = {batch_size}",
        )
    interleave = cfg.get("interleave", "none")
    if interleave not in INTERLEAVES:
        raise ConfigError(f"{prefix}.interleave", f"got {interleave!r}", allowed=INTERLEAVES)


class LabelPairBatchSampler:
    def __init__(
        self,
        labels,
        batch_size: int,
        seed: int = 0,
        batches_per_epoch: int | None = None,
        labels_per_batch: int = 16,
        images_per_label: int = 2,
        distinct_labels: bool = False,
        interleave: str = "none",
        prefix: str = "sampler",  # config path named in errors (the eval sampler lives under eval.sampler)
        drop_small_labels: bool = False,  # never draw labels with fewer than m images (evaluation on a subset)
    ):
        check_label_pair_config(
            {"labels_per_batch": labels_per_batch, "images_per_label": images_per_label, "interleave": interleave},
            batch_size,
            prefix,
            "train.batch_size" if prefix == "sampler" else "eval.batch_size",
        )
        labels = np.asarray(torch.as_tensor(labels).cpu())
        self.k, self.m = labels_per_batch, images_per_label
        self.batch_size, self.seed, self.interleave = batch_size, seed, interleave
        self.distinct_labels = bool(distinct_labels)
        self.n = len(labels)
        self.batches_per_epoch = batches_per_epoch
        self.epoch = 0
        self.classes = np.unique(labels)  # only labels present in the data can be drawn
        self.members = [np.flatnonzero(labels == c) for c in self.classes]
        if drop_small_labels:
            keep = [i for i, idx in enumerate(self.members) if len(idx) >= self.m]
            if not keep:
                raise ConfigError(f"{prefix}.images_per_label", f"no label has {self.m} images")
            self.classes, self.members = self.classes[keep], [self.members[i] for i in keep]
        small = {int(c): len(idx) for c, idx in zip(self.classes, self.members) if len(idx) < self.m}
        if small:
            raise ConfigError(
                f"{prefix}.images_per_label",
                f"{self.m} images per label, but label(s) have fewer (label: count) {small}",
            )
        if self.distinct_labels and self.k > len(self.classes):
            raise ConfigError(
                f"{prefix}.labels_per_batch",
                f"{self.k} distinct labels per batch, but the data has only {len(self.classes)} labels "
                f"(set {prefix}.distinct_labels=false to draw with replacement)",
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch or max(1, self.n // self.batch_size)

    def order(self, groups: np.ndarray) -> list[int]:
        """groups: (k, m) indices, row = one label group. Returns the batch in the configured order."""
        if self.interleave == "contiguous":
            return groups.T.reshape(-1).tolist()  # member-major
        return groups.reshape(-1).tolist()  # label-major (none, strided)

    def __iter__(self):
        rng = np.random.default_rng(epoch_seed(self.seed, self.epoch))
        # each label's images are dealt from its own shuffled deck, reshuffled when fewer than m remain,
        # so the m images of a group are distinct and images of a label are used evenly
        decks = [rng.permutation(idx) for idx in self.members]
        pos = [0] * len(decks)
        for _ in range(len(self)):
            if self.distinct_labels:
                drawn = rng.choice(len(self.classes), size=self.k, replace=False)
            else:
                drawn = rng.integers(0, len(self.classes), size=self.k)  # with replacement, as the paper
            groups = np.empty((self.k, self.m), dtype=np.int64)
            for row, c in enumerate(drawn):
                if pos[c] + self.m > len(decks[c]):
                    decks[c], pos[c] = rng.permutation(self.members[c]), 0
                groups[row] = decks[c][pos[c] : pos[c] + self.m]
                pos[c] += self.m
            yield self.order(groups)
