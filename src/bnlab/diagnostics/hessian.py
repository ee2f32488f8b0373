"""The Hessian of a training loss, without ever forming it: Hessian-vector products and what they give.

Myrtle.ai, "How to train your ResNet 7: batch norm" ("Computing the Hessian"): the top eigenvalues of the loss
Hessian bound the stable learning rate (gradient descent diverges above lr = 2 / lambda_max); they are found by
Lanczos (scipy's eigsh) on Hessian-vector products by double backprop (Pearlmutter 1994), over a fixed set of
batches. Beyond the post, as PyHessian (Yao et al. 2020) offers: power iteration, Hutchinson's trace estimator
(Hutchinson 1990: E[z^T H z] = tr H for Rademacher z) with its standard error, and the Hessian with a subspace
projected out, P H P with P = I - Q Q^T, to test whether the outliers live in that subspace.

Every operator here maps a flat parameter-space vector (torch, the parameters' dtype and device) to another.
`HessianOperator` is the loss Hessian of a model; `ProjectedOperator` wraps any operator; `top_eigenpairs`,
`power_iteration` and `hutchinson_trace` take either.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from bnlab.norm.modes import preserved_buffers


def flatten(tensors: Iterable[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(v: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    out, i = [], 0
    for p in like:
        out.append(v[i : i + p.numel()].view_as(p))
        i += p.numel()
    return out


class HessianOperator:
    """v -> H v for the Hessian of the sample-weighted mean loss over fixed `batches` [(x, y), ...].

    The loss over all batches is sum_b (n_b / N) loss_fn(model(x_b), y_b): each batch is a forward pass of its own
    (with BN in train mode, normalized by its own statistics, as in training). The model's mode is the caller's;
    its buffers are restored after every product. `params`: the parameters the Hessian is over (default: all that
    require grad).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        batches: Sequence[tuple[Tensor, Tensor]],
        params: Sequence[Tensor] | None = None,
    ):
        self.model, self.loss_fn, self.batches = model, loss_fn, list(batches)
        if not self.batches:
            raise ValueError("HessianOperator needs at least one batch")
        self.params = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
        self.n = sum(p.numel() for p in self.params)
        self.dtype, self.device = self.params[0].dtype, self.params[0].device
        total = sum(len(y) for _, y in self.batches)
        self.weights = [len(y) / total for _, y in self.batches]
        self.products = 0  # Hessian-vector products computed so far (the cost of any method)

    def loss_and_grad(self) -> tuple[float, Tensor]:
        """The loss and its gradient over the fixed batches (same weighting as the Hessian)."""
        loss, grad = 0.0, torch.zeros(self.n, dtype=self.dtype, device=self.device)
        with preserved_buffers(self.model):
            for (x, y), w in zip(self.batches, self.weights):
                batch_loss = self.loss_fn(self.model(x), y)
                grad += w * flatten(torch.autograd.grad(batch_loss, self.params))
                loss += w * batch_loss.item()
        return loss, grad

    def matvec(self, v: Tensor) -> Tensor:
        """H v by double backprop: the gradient of (grad L . v), batch by batch."""
        vs = unflatten(v.to(self.dtype), self.params)
        out = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        with preserved_buffers(self.model):
            for (x, y), w in zip(self.batches, self.weights):
                grads = torch.autograd.grad(self.loss_fn(self.model(x), y), self.params, create_graph=True)
                dot = sum((g * u).sum() for g, u in zip(grads, vs))
                out += w * flatten(torch.autograd.grad(dot, self.params))
        self.products += 1
        return out


class ProjectedOperator:
    """P A P with P = I - Q Q^T: `op` with the span of `basis` (n x m, any rank) projected out."""

    def __init__(self, op, basis: Tensor):
        self.op, self.n, self.dtype, self.device = op, op.n, op.dtype, op.device
        self.q = orthonormal_basis(basis.to(self.device, self.dtype))

    def project(self, v: Tensor) -> Tensor:
        return v - self.q @ (self.q.T @ v)

    def matvec(self, v: Tensor) -> Tensor:
        return self.project(self.op.matvec(self.project(v)))


def orthonormal_basis(vectors: Tensor, rtol: float = 1e-7) -> Tensor:
    """Orthonormal columns spanning the columns of `vectors` (n x m); directions with singular value below
    rtol * the largest are dropped (e.g. a linearly dependent gradient)."""
    u, s, _ = torch.linalg.svd(vectors, full_matrices=False)
    return u[:, s > rtol * s.max()]


def subspace_fraction(vectors: Tensor, basis: Tensor) -> Tensor:
    """Fraction of each column's squared norm inside span(basis): |Q^T v|^2 / |v|^2 (Myrtle's overlap plots)."""
    q = orthonormal_basis(basis.to(vectors.dtype))
    return (q.T @ vectors).pow(2).sum(0) / vectors.pow(2).sum(0)


def as_linear_operator(op):
    """scipy LinearOperator (float64 numpy in and out) over an operator's torch matvec."""
    from scipy.sparse.linalg import LinearOperator

    def mv(x: np.ndarray) -> np.ndarray:
        v = torch.as_tensor(np.ascontiguousarray(x).reshape(-1), dtype=op.dtype, device=op.device)
        return op.matvec(v).detach().to("cpu", torch.float64).numpy()

    return LinearOperator((op.n, op.n), matvec=mv, dtype=np.float64)


def _random_unit(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(n)
    return v / np.linalg.norm(v)


def top_eigenpairs(op, k: int, tol: float = 1e-6, seed: int = 0, ncv: int | None = None) -> tuple[Tensor, Tensor]:
    """The k largest (algebraic) eigenvalues, descending, and their unit eigenvectors (n x k), by implicitly
    restarted Lanczos (scipy.sparse.linalg.eigsh, which='LA') on Hessian-vector products; seeded start vector."""
    from scipy.sparse.linalg import eigsh

    if not 0 < k < op.n:
        raise ValueError(f"k must be in [1, {op.n - 1}], got {k}")
    vals, vecs = eigsh(as_linear_operator(op), k=k, which="LA", tol=tol, v0=_random_unit(op.n, seed), ncv=ncv)
    order = np.argsort(vals)[::-1]
    vecs = torch.as_tensor(np.ascontiguousarray(vecs[:, order]), dtype=op.dtype, device=op.device)
    return torch.as_tensor(vals[order].copy(), dtype=torch.float64), vecs


def power_iteration(op, iters: int = 200, tol: float = 1e-7, seed: int = 0) -> tuple[float, Tensor]:
    """Eigenvalue of largest magnitude and its eigenvector: v <- H v / |H v| until the Rayleigh quotient moves by
    less than tol (relative). Converges at the rate |lambda_2 / lambda_1| (slower than Lanczos)."""
    v = torch.as_tensor(_random_unit(op.n, seed), dtype=op.dtype, device=op.device)
    value = 0.0
    for _ in range(iters):
        w = op.matvec(v)
        new = float(v @ w)
        v = w / w.norm()
        if abs(new - value) <= tol * abs(new):
            return new, v
        value = new
    return value, v


def hutchinson_trace(op, samples: int = 100, seed: int = 0) -> tuple[float, float]:
    """tr H ~ mean of z^T H z over Rademacher z (Hutchinson 1990), with the standard error of that mean."""
    if samples < 2:
        raise ValueError("hutchinson_trace needs at least 2 samples for a standard error")
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(samples):
        z = (torch.randint(0, 2, (op.n,), generator=g) * 2 - 1).to(op.device, op.dtype)
        values.append(float(z @ op.matvec(z)))
    a = np.asarray(values)
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(samples))


def output_moment_gradients(
    model: nn.Module, batches: Sequence[tuple[Tensor, ...]], params: Sequence[Tensor] | None = None
) -> dict[str, Tensor]:
    """Gradients w.r.t. the parameters of each output channel's mean, variance and skewness over all `batches`
    (Myrtle: "gradients of the means of each of the 10 classifier outputs", then of variances and skews).

    Returns {"mean", "variance", "skew"}: each (n_params x C). Exact over the union of the batches: the raw moments
    E[z^p] (p = 1, 2, 3) are sample-weighted sums over batches, and the central ones follow by the chain rule:
    var = m2 - m1^2, skew = (m3 - 3 m1 m2 + 2 m1^3) / var^1.5. The model's mode is the caller's; buffers restored.
    """
    params = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    total = sum(len(b[0]) for b in batches)
    raw, grads = None, None  # raw[p][c] = E[z_c^(p+1)]; grads[p][c] its gradient
    with preserved_buffers(model):
        for batch in batches:
            x = batch[0]
            z = model(x)
            w = len(x) / total
            if raw is None:
                c = z.shape[1]
                n = sum(p.numel() for p in params)
                raw = torch.zeros(3, c, dtype=torch.float64)
                grads = torch.zeros(3, c, n, dtype=params[0].dtype, device=params[0].device)
            for p in range(3):
                powers = z.pow(p + 1).mean(0)
                raw[p] += w * powers.detach().to("cpu", torch.float64)
                for ch in range(z.shape[1]):
                    g = torch.autograd.grad(powers[ch], params, retain_graph=True)
                    grads[p, ch] += w * flatten(g)
    m1, m2, m3 = (raw[i].to(grads.dtype).to(grads.device)[:, None] for i in range(3))
    g1, g2, g3 = grads
    var = m2 - m1**2
    g_var = g2 - 2 * m1 * g1
    central3 = m3 - 3 * m1 * m2 + 2 * m1**3
    g_central3 = g3 - 3 * (m2 * g1 + m1 * g2) + 6 * m1**2 * g1
    g_skew = g_central3 / var**1.5 - 1.5 * central3 / var**2.5 * g_var
    return {"mean": g1.T.contiguous(), "variance": g_var.T.contiguous(), "skew": g_skew.T.contiguous()}
