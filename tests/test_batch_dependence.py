"""The mate-swap probe (diagnostics/batch_dependence.py): batches drawn as declared, and a model that reads its
batch is told apart from one that cannot."""

import numpy as np
import pytest
import torch
from torch import nn

from bnlab.diagnostics.batch_dependence import mate_swap, probe_batches


def test_probe_batches_shapes_labels_and_strangers():
    labels = torch.arange(60).repeat_interleave(5)  # 60 classes x 5 images
    pb = probe_batches(labels, 4, 3, n_batches=10, seed=0)
    y = labels.numpy()
    for mates, swapped in zip(pb.mates, pb.swapped):
        assert len(mates) == len(swapped) == 12 and len(set(mates)) == 12
        groups = y[mates].reshape(4, 3)
        assert (groups == groups[:, :1]).all() and len(set(groups[:, 0])) == 4  # 4 distinct labels x 3 images
        assert (swapped[pb.scored] == mates[pb.scored]).all()  # the scored images are the same ...
        assert len(set(y[swapped])) == 12  # ... and in the swapped batch no label appears twice
    assert list(pb.scored) == [0, 3, 6, 9]
    again = probe_batches(labels, 4, 3, n_batches=10, seed=0)
    assert all((a == b).all() for a, b in zip(pb.swapped, again.swapped))


def test_probe_refuses_too_few_labels():
    with pytest.raises(ValueError, match="needs 4 labels"):
        probe_batches(torch.arange(3).repeat_interleave(5), 4, 2, 1, 0)


class ReadsItsBatch(nn.Module):
    """Logits = one-hot(image's class feature) minus the batch mean in training mode: a stand-in for a net that
    learned to lean on its batch. Its BN has no affine and starts from running stats that carry no signal."""

    def __init__(self, classes):
        super().__init__()
        self.bn = nn.BatchNorm1d(classes, affine=False, momentum=0.0)
        self.classes = classes

    def forward(self, x):
        noisy = x.flatten(1)[:, : self.classes]
        return self.bn(noisy)


def _data(classes=40, per=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(per)
    x = 0.6 * nn.functional.one_hot(y, classes).float() + torch.randn(len(y), classes, generator=g)
    # a shared per-image offset that the batch mean of the mates removes: the mates carry information
    x = x + 3.0 * torch.randn(len(y), 1, generator=g) * nn.functional.one_hot(y, classes).float()
    return x, y


def test_group_norm_like_model_is_blind_to_mates():
    x, y = _data()
    model = nn.Sequential(nn.Linear(40, 40), nn.LayerNorm(40))
    out = mate_swap(model, x, y, lambda t: t, 4, 4, n_batches=20, seed=1)
    assert out["mates"] == out["swapped"] == out["running"] and out["n"] == 80


def test_batch_reading_model_differs_and_buffers_stay():
    x, y = _data()
    model = ReadsItsBatch(40).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = mate_swap(model, x, y, lambda t: t, 4, 4, n_batches=30, seed=1)
    assert out["mates"] != out["swapped"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not model.training  # the mode it came in with
    assert np.isclose(out["n"], 120)
