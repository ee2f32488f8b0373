"""Hessian-vector products, Lanczos, power iteration, Hutchinson and projections against the exact Hessian
of a small float64 net (torch.autograd.functional.hessian over its flattened parameters)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from bnlab.diagnostics.hessian import (
    HessianOperator,
    ProjectedOperator,
    flatten,
    hutchinson_trace,
    output_moment_gradients,
    power_iteration,
    subspace_fraction,
    top_eigenpairs,
    unflatten,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny ops: a second intra-op thread only adds contention on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_net(with_bn: bool) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(5, 7), nn.BatchNorm1d(7) if with_bn else nn.Identity(), nn.Softplus(), nn.Linear(7, 4)]
    return nn.Sequential(*layers).double().train()


def batches(n_batches: int = 3, size: int = 16):
    g = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(size + 4 * i, 5, generator=g, dtype=torch.float64),
            torch.randint(0, 4, (size + 4 * i,), generator=g),
        )
        for i in range(n_batches)
    ]


def exact_hessian(model, data) -> torch.Tensor:
    names = [n for n, p in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    total = sum(len(y) for _, y in data)

    def loss(theta):
        state = {**dict(zip(names, unflatten(theta, params))), **{k: v.clone() for k, v in buffers.items()}}
        return sum(len(y) / total * F.cross_entropy(functional_call(model, state, (x,)), y) for x, y in data)

    return torch.autograd.functional.hessian(loss, flatten(params))


@pytest.fixture(params=[False, True], ids=["plain", "batchnorm"])
def setup(request):
    model, data = small_net(request.param), batches()
    return HessianOperator(model, F.cross_entropy, data), exact_hessian(model, data), model


def test_hvp_equals_exact_hessian_times_vector_and_leaves_buffers(setup):
    op, h, model = setup
    before = [b.clone() for b in model.buffers()]
    v = torch.randn(op.n, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(op.matvec(v), h @ v, rtol=1e-10, atol=1e-12)
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers()))


def test_lanczos_top_eigenvalues_match_exact(setup):
    op, h, _ = setup
    exact = torch.linalg.eigvalsh(h).flip(0)[:6]
    vals, vecs = top_eigenpairs(op, k=6, tol=1e-10)
    assert torch.allclose(vals, exact, rtol=1e-4)
    for i in range(6):  # eigenvectors too: H v = lambda v
        assert torch.allclose(h @ vecs[:, i], vals[i] * vecs[:, i], atol=1e-6 * exact[0].abs())


def test_power_iteration_finds_the_largest_magnitude_eigenvalue(setup):
    op, h, _ = setup
    eig = torch.linalg.eigvalsh(h)
    target = eig[eig.abs().argmax()].item()
    value, v = power_iteration(op, iters=3000, tol=1e-12)
    assert value == pytest.approx(target, rel=1e-4)
    assert v.norm().item() == pytest.approx(1.0)


def test_hutchinson_trace_within_its_standard_error(setup):
    op, h, _ = setup
    estimate, stderr = hutchinson_trace(op, samples=100, seed=3)
    true = torch.trace(h).item()
    assert abs(estimate - true) < 3.5 * stderr
    # the stated error is the real one: Var(z^T H z) = 2 (|H|_F^2 - sum H_ii^2) for Rademacher z
    expected = np.sqrt(2 * ((h**2).sum() - (torch.diagonal(h) ** 2).sum()).item() / 100)
    assert stderr == pytest.approx(expected, rel=0.3)


def test_projected_operator_is_p_h_p(setup):
    op, h, _ = setup
    basis = torch.randn(op.n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    basis = torch.cat([basis, basis[:, :1] + basis[:, 1:2]], 1)  # a dependent column is dropped, not an error
    proj = ProjectedOperator(op, basis)
    assert proj.q.shape[1] == 3
    p = torch.eye(op.n, dtype=torch.float64) - proj.q @ proj.q.T
    exact = torch.linalg.eigvalsh(p @ h @ p).flip(0)[:4]
    vals, vecs = top_eigenpairs(proj, k=4, tol=1e-10)
    assert torch.allclose(vals, exact, rtol=1e-4)
    assert subspace_fraction(vecs, basis).max().item() < 1e-10


def test_subspace_fraction():
    basis = torch.randn(50, 4, dtype=torch.float64)
    inside = basis @ torch.randn(4, 2, dtype=torch.float64)
    q, _ = torch.linalg.qr(basis, mode="complete")
    outside = q[:, 4:6]
    frac = subspace_fraction(torch.cat([inside, outside, inside[:, :1] + outside[:, :1]], 1), basis)
    assert torch.allclose(frac, torch.tensor([1.0, 1.0, 0.0, 0.0, frac[4].item()], dtype=torch.float64), atol=1e-12)
    assert 0 < frac[4] < 1


@pytest.mark.parametrize("with_bn", [False, True], ids=["plain", "batchnorm"])
def test_output_moment_gradients_match_autograd_over_all_batches(with_bn):
    model, data = small_net(with_bn), batches()
    got = output_moment_gradients(model, data)
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]
    buffers = {n: b.clone() for n, b in model.named_buffers()}

    def moments(theta):
        state = {**dict(zip(names, unflatten(theta, params))), **{k: v.clone() for k, v in buffers.items()}}
        z = torch.cat([functional_call(model, state, (x,)) for x, _ in data])  # each batch its own forward
        mean = z.mean(0)
        var = z.var(0, unbiased=False)
        skew = ((z - mean) ** 3).mean(0) / var**1.5
        return torch.stack([mean, var, skew])

    jac = torch.autograd.functional.jacobian(moments, flatten(params))  # (3, C, n)
    for i, key in enumerate(["mean", "variance", "skew"]):
        assert got[key].shape == (flatten(params).numel(), 4)
        assert torch.allclose(got[key], jac[i].T, rtol=1e-8, atol=1e-10), key
