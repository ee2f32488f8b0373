"""How much a model's prediction for one image depends on the other images of its normalization batch.

Ioffe (2017, sec. 4.3) trains with batches of k labels x m images and finds that the model learns to lean on the
images that share a label with it: evaluated in training mode on test batches drawn the same way it does far
better than with population statistics. The mate-swap probe measures that reliance directly. Test batches are
drawn as in training (k distinct labels x m images); the first image of each label group is scored

  - "mates":    in training mode, inside that batch (its m - 1 mates present),
  - "swapped":  in training mode, inside the same batch with every mate replaced by an image of a label found
                nowhere else in the batch (same batch size, same scored images, no label shared),
  - "running":  in eval mode (running statistics), which sees no batch at all.

mates - swapped is what the mates are worth to a prediction. A batch-independent norm (GroupNorm, LayerNorm)
gives exactly the same three numbers; BN trained on i.i.d. batches should gain little from mates it never
learned to expect. Buffers are restored after the training-mode passes, so the probe never moves the running
statistics of the model it measures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bnlab.norm.modes import mode, preserved_buffers


@dataclass(frozen=True)
class ProbeBatches:
    """Index lists into the probed dataset: per batch, the batch with mates, the batch with mates swapped, and
    the positions (in both) of the scored images."""

    mates: list[np.ndarray]
    swapped: list[np.ndarray]
    scored: np.ndarray  # positions of the scored images inside every batch (the same in all of them)


def probe_batches(labels, labels_per_batch: int, images_per_label: int, n_batches: int, seed: int) -> ProbeBatches:
    """Draw `n_batches` batches of k distinct labels x m images, and their mate-swapped twins (seeded)."""
    k, m = int(labels_per_batch), int(images_per_label)
    labels = np.asarray(torch.as_tensor(labels).cpu())
    classes = np.unique(labels)
    members = {int(c): np.flatnonzero(labels == c) for c in classes}
    usable = np.array([c for c in classes if len(members[int(c)]) >= m])
    need = k + k * (m - 1)  # scored labels + one fresh label per swapped-in image
    if len(usable) < k or len(classes) < need:
        raise ValueError(
            f"the mate-swap probe needs {k} labels with >= {m} images and {need} labels in all; "
            f"the data has {len(usable)} and {len(classes)}"
        )
    rng = np.random.default_rng(seed)
    mates, swapped = [], []
    for _ in range(n_batches):
        chosen = rng.choice(usable, size=k, replace=False)
        groups = [rng.choice(members[int(c)], size=m, replace=False) for c in chosen]
        others = rng.choice(np.setdiff1d(classes, chosen), size=k * (m - 1), replace=False)
        strangers = np.array([rng.choice(members[int(c)]) for c in others]).reshape(k, m - 1)
        mates.append(np.concatenate(groups))
        swapped.append(np.concatenate([np.concatenate([g[:1], s]) for g, s in zip(groups, strangers)]))
    return ProbeBatches(mates, swapped, np.arange(k) * m)


@torch.no_grad()
def _scored_correct(model, images, labels, batches, scored, transform) -> tuple[int, int]:
    right = total = 0
    for idx in batches:
        t = torch.as_tensor(idx, dtype=torch.long, device=images.device)
        x, y = transform(images[t]), labels[t]
        pred = model(x).argmax(1)
        right += int((pred[scored] == y[scored]).sum())
        total += len(scored)
    return right, total


def mate_swap(model, images, labels, transform, labels_per_batch: int, images_per_label: int,
              n_batches: int = 40, seed: int = 0) -> dict:  # fmt: skip
    """Accuracies {'mates', 'swapped', 'running'} on the scored images, and 'n' (how many were scored).

    images: the dataset (what `transform` turns into model input), labels: its labels, transform: e.g. a
    DeviceLoader's `transform` (uint8 -> normalized float)."""
    pb = probe_batches(labels, labels_per_batch, images_per_label, n_batches, seed)
    scored = torch.as_tensor(pb.scored, device=images.device)
    out = {}
    with mode(model, train=True), preserved_buffers(model):
        r, n = _scored_correct(model, images, labels, pb.mates, scored, transform)
        out["mates"] = r / n
        r, _ = _scored_correct(model, images, labels, pb.swapped, scored, transform)
        out["swapped"] = r / n
    with mode(model, train=False):
        r, _ = _scored_correct(model, images, labels, pb.mates, scored, transform)
        out["running"] = r / n
    out["n"] = n
    return out
