r"""Optimal transport: exact plans, mixture weights, Sinkhorn. The only minigen module that imports POT.

The Kantorovich problem between discrete measures :math:`a \in \Delta_n`, :math:`b \in \Delta_m`
with cost :math:`M \in \R^{n \times m}`,

.. math:: \operatorname{OT}(a, b) = \min_{P \ge 0,\ P 1 = a,\ P^\top 1 = b} \langle P, M \rangle,

is a linear program; with :math:`M_{ij} = \|x_i - y_j\|^2` its value is :math:`W_2^2`. Its
entropic version adds :math:`\varepsilon \KL(P \,\|\, a b^\top)` and is solved by Sinkhorn's
iteration (:func:`sinkhorn_scaling`, :func:`sinkhorn_log`). Everything takes and returns torch
tensors; :func:`emd2` is differentiable through POT's torch backend. Chapter 8 derives it all.

Inputs are checked before any solver runs: weights must lie on the simplex (finite,
non-negative, summing to 1; the message names the offending vector), costs and points must be
finite and non-empty, ``eps`` positive, iteration counts integers >= 1. Tensors that combine
(``a``, ``b``, ``M``; ``H``, ``b``, ``M``, ``w0``; ``x``, ``y``) must share a dtype, else
``ValueError`` naming both: nothing is converted silently.
"""
from __future__ import annotations

import math

import numpy as np
import ot as pot
import torch
from scipy import optimize, sparse
from torch import Tensor

from .networks import _count, _finite, _same_dtype

__all__ = [
    "cost_matrix",
    "uniform",
    "emd",
    "emd2",
    "wasserstein2",
    "ot_permutation",
    "project_simplex",
    "unmix",
    "unmix_projected_gradient",
    "unmix_cutting_planes",
    "unmix_lp",
    "sinkhorn_scaling",
    "sinkhorn_log",
    "entropic_ot",
    "sinkhorn_divergence",
]


def cost_matrix(x: Tensor, y: Tensor) -> Tensor:
    r"""Squared Euclidean cost :math:`M_{ij} = \|x_i - y_j\|^2`; ``(n, d), (m, d) -> (n, m)``."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be (n, d) and (m, d); got {tuple(x.shape)}, {tuple(y.shape)}")
    _same_dtype(x=x, y=y)
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)


def uniform(n: int, dtype: torch.dtype = torch.float64,
            device: torch.device | str | None = None) -> Tensor:
    """The uniform weights ``(n,)``, all ``1 / n``, in ``dtype`` on ``device``."""
    _count(n, "n")
    return torch.full((n,), 1.0 / n, dtype=dtype, device=device)


def _simplex_tol(w: Tensor) -> float:
    return max(1e-6, 100 * torch.finfo(w.dtype).eps)


def _check_weights(w: Tensor, name: str) -> float:
    """Check that ``w`` is a finite, non-negative, non-empty vector; return its sum."""
    if w.dim() != 1 or w.numel() == 0:
        raise ValueError(f"{name} must be a non-empty vector of weights (n,), got shape {tuple(w.shape)}")
    _finite(w, name)
    if bool((w < 0).any()):
        raise ValueError(f"{name} has {int((w < 0).sum())} negative entries (smallest {float(w.min()):.3g}); "
                         f"weights must lie on the simplex")
    return float(w.sum())


def _check_simplex(w: Tensor, name: str) -> None:
    total = _check_weights(w, name)
    if abs(total - 1) > _simplex_tol(w):
        raise ValueError(f"{name} sums to {total:.10g}, expected 1 (weights on the simplex)")


def _check_marginals(a: Tensor, b: Tensor, M: Tensor) -> None:
    sa, sb = _check_weights(a, "a"), _check_weights(b, "b")
    if abs(sa - sb) > _simplex_tol(a):
        raise ValueError(f"a and b must have equal mass: a sums to {sa:.10g}, b sums to {sb:.10g} "
                         f"(expected 1 each)")
    if abs(sa - 1) > _simplex_tol(a):
        raise ValueError(f"a and b sum to {sa:.10g}, expected 1 (weights on the simplex)")
    if M.shape != (a.shape[0], b.shape[0]):
        raise ValueError(f"M must have shape {(a.shape[0], b.shape[0])}, got {tuple(M.shape)}")
    _finite(M, "the cost M")
    _same_dtype(a=a, b=b, M=M)


def _check_unmix(H: Tensor, b: Tensor, M: Tensor, w0: Tensor | None = None) -> None:
    """``H`` ``(n, K)`` with columns on the simplex, ``b`` on the simplex, ``M`` ``(n, m)``, ``w0`` ``(K,)``."""
    if H.dim() != 2 or H.numel() == 0:
        raise ValueError(f"H must be (n, K), one source's weights per column, got shape {tuple(H.shape)}")
    for k in range(H.shape[1]):
        _check_simplex(H[:, k], f"column {k} of H")
    _check_simplex(b, "b")
    if M.shape != (H.shape[0], b.shape[0]):
        raise ValueError(f"M must have shape {(H.shape[0], b.shape[0])}, got {tuple(M.shape)}")
    _finite(M, "the cost M")
    if w0 is not None:
        if w0.shape != (H.shape[1],):
            raise ValueError(f"w0 must have shape ({H.shape[1]},), one weight per column of H, "
                             f"got {tuple(w0.shape)}")
        _check_simplex(w0, "w0")
    _same_dtype(H=H, b=b, M=M, w0=w0)


def emd(a: Tensor, b: Tensor, M: Tensor) -> Tensor:
    r"""Exact optimal plan :math:`P^\star` of :eq:`eq-ot-kantorovich` (``ot.emd``); ``(n, m)``.

    ``a`` ``(n,)`` and ``b`` ``(m,)`` on the simplex, ``M`` ``(n, m)`` finite, all of one dtype.
    """
    _check_marginals(a, b, M)
    return pot.emd(a, b, M)


def emd2(a: Tensor, b: Tensor, M: Tensor) -> Tensor:
    r"""Optimal cost :math:`\langle P^\star, M \rangle` of :eq:`eq-ot-kantorovich`, differentiable.

    Gradients flow through POT's torch backend: with respect to ``a`` it is the dual potential
    :math:`f` (centred to sum to zero), with respect to ``M`` the plan :math:`P^\star`
    (:eq:`eq-ot-dual`). ``a``, ``b`` on the simplex, ``M`` ``(n, m)``. Returns a 0-d tensor.
    """
    _check_marginals(a.detach(), b.detach(), M.detach())
    return pot.emd2(a, b, M)


def wasserstein2(x: Tensor, y: Tensor) -> float:
    r"""Exact :math:`W_2` between the empirical measures of ``x`` ``(n, d)`` and ``y`` ``(m, d)``."""
    x, y = x.detach().double().cpu(), y.detach().double().cpu()
    return float(emd2(uniform(len(x)), uniform(len(y)), cost_matrix(x, y))) ** 0.5


def ot_permutation(x0: Tensor, x1: Tensor) -> Tensor:
    r"""Index ``sigma`` ``(n,)`` such that pairing ``x0[i]`` with ``x1[sigma[i]]`` is optimal.

    With uniform weights and ``n`` points on each side, an optimal vertex of
    :eq:`eq-ot-kantorovich` is a permutation matrix divided by ``n`` (Birkhoff), which ``ot.emd``
    returns; the permutation minimises :math:`\sum_i \|x_{0,i} - x_{1,\sigma(i)}\|^2`.
    """
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must have the same shape, got {tuple(x0.shape)}, {tuple(x1.shape)}")
    # NumPy in and out, cost by |x|^2 + |y|^2 - 2 x.y: no overhead inside a training loop
    M = pot.dist(x0.detach().double().cpu().numpy(), x1.detach().double().cpu().numpy())
    a = np.full(len(x0), 1.0 / len(x0))
    P = pot.emd(a, a, M)
    return torch.from_numpy(P.argmax(axis=1)).to(x0.device)


def project_simplex(v: Tensor) -> Tensor:
    r"""Euclidean projection of ``v`` ``(K,)`` onto the simplex :math:`\Delta_K` (:eq:`eq-ot-projection`).

    :math:`\Pi(v) = \max(v - \tau, 0)` with the threshold :math:`\tau` found by sorting
    (Duchi et al. 2008): :math:`O(K \log K)`.
    """
    if v.dim() != 1 or v.numel() == 0:
        raise ValueError(f"v must be a non-empty vector (K,), got shape {tuple(v.shape)}")
    u = v.sort(descending=True).values  # (K,)
    css = u.cumsum(0) - 1  # (K,)
    k = torch.arange(1, v.numel() + 1, dtype=v.dtype, device=v.device)
    rho = int((u - css / k > 0).nonzero().max())  # last index where the condition holds
    tau = css[rho] / (rho + 1)
    return (v - tau).clamp_min(0)


_TIGHT = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}


def _loss_and_grad(H: Tensor, b: Tensor, M: Tensor, w: Tensor) -> tuple[float, Tensor]:
    w = w.detach().requires_grad_(True)
    loss = emd2(H @ w, b, M)
    (grad,) = torch.autograd.grad(loss, w)
    return float(loss.detach()), grad


def unmix(H: Tensor, b: Tensor, M: Tensor, w0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    r"""Mixture weights :math:`\hat w = \arg\min_{w \in \Delta} \operatorname{OT}(Hw, b)` (:eq:`eq-ot-unmix`), exactly.

    The method to use by default: Kelley's cutting planes (:func:`unmix_cutting_planes`) from
    ``w0`` (uniform when ``None``). ``H`` ``(n, K)`` holds each source's weights in a column,
    ``b`` ``(m,)`` the target weights, ``M`` ``(n, m)`` the cost. Returns the weights ``(K,)`` and
    the loss at each evaluation.

    Which method when: cutting planes need one exact transport solve per plane and reach the
    optimum in a few dozen solves for a few sources, which makes them the fastest exact method
    at the sizes of the book and of most coursework (a few sources, hundreds to a few thousand
    points). :func:`unmix_lp` solves the whole problem as one linear program: exact and simple,
    but its size grows with ``n * m``, so it slows down first as the point clouds grow.
    :func:`unmix_projected_gradient` is the method chapter 8 derives: a fixed step stops short of
    the optimum (the loss is piecewise linear), an adaptive step reaches it; use it to learn, or
    when the loss is only a building block of a larger gradient-based fit.
    """
    _check_unmix(H, b, M)
    if w0 is None:
        w0 = torch.full((H.shape[1],), 1.0 / H.shape[1], dtype=H.dtype, device=H.device)
    return unmix_cutting_planes(H, b, M, w0)


def unmix_projected_gradient(H: Tensor, b: Tensor, M: Tensor, w0: Tensor, lr: float = 2e-3,
                             n_iter: int = 500, adaptive: bool = False,
                             tol: float = 1e-12) -> tuple[Tensor, Tensor]:
    r"""Mixture weights by projected gradient on :math:`w \mapsto \operatorname{OT}(Hw, b)` (:eq:`eq-ot-unmix`).

    ``H`` ``(n, K)`` holds each source's weights in a column, ``b`` ``(m,)`` the target weights,
    ``M`` ``(n, m)`` the cost, ``w0`` ``(K,)`` the start. Each step is
    :math:`w \leftarrow \Pi_\Delta(w - \eta \nabla_w \operatorname{OT}(Hw, b))`.

    With ``adaptive=False`` the step :math:`\eta` = ``lr`` is fixed for ``n_iter`` steps (POT's
    example). With ``adaptive=True`` a step is kept only if it lowers the loss, and :math:`\eta`
    doubles after a kept step and halves after a rejected one; since the loss is piecewise linear
    in :math:`w`, this homes in on the kink that minimises it. It stops once a step moves
    :math:`w` by less than ``tol`` (or after ``n_iter`` loss evaluations).
    Returns the weights ``(K,)`` and the loss at each evaluation ``(n_evals,)``. ``H``'s columns,
    ``b`` and ``w0`` must lie on the simplex.
    """
    _check_unmix(H, b, M, w0)
    _count(n_iter, "n_iter")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    w = w0.detach().to(H).clone()
    loss, grad = _loss_and_grad(H, b, M, w)
    losses = [loss]
    for _ in range(n_iter - 1 if adaptive else n_iter):
        w_new = project_simplex(w - lr * grad)
        if adaptive and float((w_new - w).abs().sum()) < tol:
            break
        loss_new, grad_new = _loss_and_grad(H, b, M, w_new)
        if not adaptive or loss_new < loss:
            w, loss, grad = w_new, loss_new, grad_new
            lr = 2 * lr if adaptive else lr
        else:
            lr = lr / 2
        losses.append(loss_new)
    return w, torch.tensor(losses[:n_iter], dtype=torch.float64)


def unmix_cutting_planes(H: Tensor, b: Tensor, M: Tensor, w0: Tensor, n_iter: int = 200,
                         tol: float = 1e-10) -> tuple[Tensor, Tensor]:
    r"""Mixture weights by Kelley's cutting planes on the same loss as :func:`unmix_projected_gradient` (:eq:`eq-ot-cutting-planes`).

    Each evaluation of :math:`\operatorname{OT}(Hw_k, b)` and its gradient :math:`g_k = H^\top f_k`
    gives a plane below the convex loss; the next point minimises the highest plane over the
    simplex (a linear program in :math:`K + 1` variables). The loss is the maximum of finitely
    many planes, so the method stops at the exact minimiser once the lowest point of the model
    meets the best loss seen (within ``tol``). Returns the weights ``(K,)`` and the losses.
    ``H``'s columns, ``b`` and ``w0`` must lie on the simplex; the linear programs run in NumPy
    (float64, on the CPU) and the weights come back in ``H``'s dtype on its device.
    """
    _check_unmix(H, b, M, w0)
    _count(n_iter, "n_iter")
    w = w0.detach().to(H).clone()
    K = len(w)
    planes, offsets, losses = [], [], []
    best_w, best = w, float("inf")
    for _ in range(n_iter):
        loss, grad = _loss_and_grad(H, b, M, w)
        losses.append(loss)
        if loss < best:
            best_w, best = w, loss
        planes.append(grad.detach().double().cpu().numpy())
        offsets.append(loss - float(grad @ w))
        # min t  s.t.  g_k . w + c_k <= t,  sum w = 1,  w >= 0; variables (w, t)
        A = np.hstack([np.array(planes), -np.ones((len(planes), 1))])
        res = optimize.linprog(np.r_[np.zeros(K), 1.0], A_ub=A, b_ub=-np.array(offsets),
                               A_eq=np.r_[np.ones(K), 0.0][None], b_eq=[1.0],
                               bounds=[(0, None)] * K + [(None, None)], method="highs",
                               options=_TIGHT)
        if best - res.fun <= tol:
            break
        w = torch.from_numpy(res.x[:K].clip(0, None)).to(H)  # HiGHS may return -1e-17 for a zero
    return best_w, torch.tensor(losses, dtype=torch.float64)


def unmix_lp(H: Tensor, b: Tensor, M: Tensor) -> tuple[Tensor, float]:
    r"""Exact solution of :eq:`eq-ot-unmix-lp`: one linear program in the plan and the weights.

    Variables :math:`(P, w)`; constraints :math:`P 1 = H w`, :math:`P^\top 1 = b`,
    :math:`P, w \ge 0` (then :math:`\sum_k w_k = 1` follows). Solved with HiGHS through
    ``scipy.optimize.linprog``. Returns the weights ``(K,)`` (float64, on the CPU) and the optimal cost.
    """
    _check_unmix(H, b, M)
    Hn, bn, Mn = (t.detach().double().cpu().numpy() for t in (H, b, M))
    n, K = Hn.shape
    m = len(bn)
    rows = sparse.kron(sparse.eye(n), np.ones((1, m)))  # (n, n m): P 1
    cols = sparse.kron(np.ones((1, n)), sparse.eye(m))  # (m, n m): P^T 1
    A = sparse.bmat([[rows, -Hn], [cols, None]], format="csr")
    rhs = np.concatenate([np.zeros(n), bn])
    c = np.concatenate([Mn.ravel(), np.zeros(K)])
    res = optimize.linprog(c, A_eq=A, b_eq=rhs, bounds=(0, None), method="highs", options=_TIGHT)
    if res.status != 0:
        raise RuntimeError(f"linprog failed: {res.message}")
    return torch.from_numpy(res.x[-K:]), float(res.fun)


def _check_eps(eps: float, n_iter: int) -> None:
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be positive and finite, got {eps}")
    _count(n_iter, "n_iter")


def sinkhorn_scaling(a: Tensor, b: Tensor, M: Tensor, eps: float, n_iter: int = 1000) -> Tensor:
    r"""Entropic plan by Sinkhorn's scaling iteration (:eq:`eq-ot-sinkhorn-scaling`); ``(n, m)``.

    :math:`K = e^{-M/\varepsilon}`, :math:`u \leftarrow a / Kv`, :math:`v \leftarrow b / K^\top u`,
    :math:`P = \diag(u) K \diag(v)`. Underflows (NaN) once :math:`M/\varepsilon` exceeds ~700 in
    float64; use :func:`sinkhorn_log` there.
    """
    _check_marginals(a, b, M)
    _check_eps(eps, n_iter)
    K = torch.exp(-M / eps)  # (n, m)
    v = torch.ones_like(b)
    for _ in range(n_iter):
        u = a / (K @ v)
        v = b / (K.T @ u)
    return u[:, None] * K * v[None, :]


def sinkhorn_log(a: Tensor, b: Tensor, M: Tensor, eps: float, n_iter: int = 1000,
                 tol: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    r"""Sinkhorn in the log domain (:eq:`eq-ot-sinkhorn-log`): returns ``(P, f, g)``.

    Dual potentials ``f`` ``(n,)``, ``g`` ``(m,)`` updated with log-sum-exp,
    :math:`f_i = -\varepsilon \log \sum_j b_j e^{(g_j - M_{ij})/\varepsilon}` (and symmetrically),
    so nothing under- or overflows; :math:`P_{ij} = a_i b_j e^{(f_i + g_j - M_{ij})/\varepsilon}`.
    Stops early when the row-marginal error (checked every 10 iterations) falls below ``tol``.
    """
    _check_marginals(a, b, M)
    _check_eps(eps, n_iter)
    log_a, log_b = a.log(), b.log()
    f, g = torch.zeros_like(a), torch.zeros_like(b)
    for k in range(n_iter):
        f = -eps * torch.logsumexp(log_b[None, :] + (g[None, :] - M) / eps, dim=1)
        g = -eps * torch.logsumexp(log_a[:, None] + (f[:, None] - M) / eps, dim=0)
        if tol > 0 and k % 10 == 9:
            log_P = log_a[:, None] + log_b[None, :] + (f[:, None] + g[None, :] - M) / eps
            if float((log_P.exp().sum(1) - a).abs().sum()) < tol:
                break
    log_P = log_a[:, None] + log_b[None, :] + (f[:, None] + g[None, :] - M) / eps
    return log_P.exp(), f, g


def entropic_ot(a: Tensor, b: Tensor, M: Tensor, eps: float, n_iter: int = 1000,
                tol: float = 0.0) -> Tensor:
    r"""Regularised cost :math:`\operatorname{OT}_\varepsilon(a, b) = \langle a, f \rangle + \langle b, g \rangle` (:eq:`eq-ot-entropic-dual`).

    At convergence this equals :math:`\langle P, M\rangle + \varepsilon \KL(P \,\|\, a b^\top)`.
    ``a`` ``(n,)``, ``b`` ``(m,)`` on the simplex, ``M`` ``(n, m)``; returns a 0-d tensor.

    Differentiable by the envelope theorem (:eq:`eq-ot-envelope`): the potentials are found without
    autograd (:func:`sinkhorn_log`, ``n_iter`` iterations or until the row-marginal error is below
    ``tol``), then ``f`` is recomputed once from ``g`` with autograd on, so that
    :math:`\partial/\partial M = P`, :math:`\partial/\partial a = f` and
    :math:`\partial/\partial b = g - \varepsilon` (the constants do not matter on the simplex).
    The backward pass costs one iteration instead of ``n_iter``.
    """
    with torch.no_grad():
        _, _, g = sinkhorn_log(a.detach(), b.detach(), M.detach(), eps, n_iter, tol)
    f = -eps * torch.logsumexp(b.log()[None, :] + (g[None, :] - M) / eps, dim=1)  # (n,)
    return (a * f).sum() + (b * g).sum()


def sinkhorn_divergence(x: Tensor, y: Tensor, eps: float, n_iter: int = 1000, *,
                        a: Tensor | None = None, b: Tensor | None = None, tol: float = 0.0) -> Tensor:
    r"""Debiased Sinkhorn divergence :math:`S_\varepsilon` (:eq:`eq-ot-sinkhorn-divergence`).

    :math:`S_\varepsilon = \operatorname{OT}_\varepsilon(\alpha, \beta)
    - \tfrac12 \operatorname{OT}_\varepsilon(\alpha, \alpha) - \tfrac12 \operatorname{OT}_\varepsilon(\beta, \beta)`
    between :math:`\alpha = \sum_i a_i \delta_{x_i}` and :math:`\beta = \sum_j b_j \delta_{y_j}`,
    ``x`` ``(n, d)``, ``y`` ``(m, d)``, weights ``a`` ``(n,)``, ``b`` ``(m,)`` on the simplex
    (uniform when ``None``); zero when the two measures are equal. Differentiable in the points
    and the weights (:func:`entropic_ot`). Non-empty, finite points of one dtype; uniform weights
    are created in that dtype on their device.
    """
    cost_matrix(x[:0], y[:0])  # shapes and dtypes
    for name, z in (("x", x), ("y", y)):
        if len(z) == 0:
            raise ValueError(f"{name} is empty, shape {tuple(z.shape)}")
        _finite(z, name)
    a = uniform(len(x), x.dtype, x.device) if a is None else a
    b = uniform(len(y), y.dtype, y.device) if b is None else b
    for name, w, z in (("a", a, x), ("b", b, y)):
        if w.shape != (len(z),):
            raise ValueError(f"weights {name} must have shape ({len(z)},), one per point, got {tuple(w.shape)}")
    xy = entropic_ot(a, b, cost_matrix(x, y), eps, n_iter, tol)
    xx = _entropic_ot_self(a, cost_matrix(x, x), eps, n_iter, tol)
    yy = _entropic_ot_self(b, cost_matrix(y, y), eps, n_iter, tol)
    return xy - 0.5 * (xx + yy)


def _entropic_ot_self(a: Tensor, M: Tensor, eps: float, n_iter: int, tol: float) -> Tensor:
    r""":math:`\operatorname{OT}_\varepsilon(a, a)` for a symmetric cost ``M`` ``(n, n)``, where ``f = g``.

    The symmetric fixed point :math:`f = T(f)`, :math:`T(f)_i = -\varepsilon \log \sum_j a_j
    e^{(f_j - M_{ij})/\varepsilon}`, is iterated with averaging, :math:`f \leftarrow (f + T(f))/2`,
    which converges in tens of iterations where the alternating updates of :func:`sinkhorn_log`
    oscillate for hundreds; the gradient is taken as in :func:`entropic_ot`.
    """
    _check_marginals(a.detach(), a.detach(), M.detach())
    _check_eps(eps, n_iter)
    log_a = a.detach().log()
    T = lambda f, M, log_a: -eps * torch.logsumexp(log_a[None, :] + (f[None, :] - M) / eps, dim=1)  # (n,)
    with torch.no_grad():
        f = torch.zeros_like(log_a)
        for k in range(n_iter):
            f = 0.5 * (f + T(f, M.detach(), log_a))
            if tol > 0 and k % 10 == 9:
                log_P = log_a[:, None] + log_a[None, :] + (f[:, None] + f[None, :] - M.detach()) / eps
                if float((log_P.exp().sum(1) - a.detach()).abs().sum()) < tol:
                    break
    return (a * T(f, M, a.log())).sum() + (a * f).sum()
