r"""Normalizing flows: invertible transforms composed with a base distribution.

A flow maps data :math:`x` to a base variable :math:`z = f(x)`, :math:`z \sim \mathcal N(0, I)`,
and scores data by the change of variables (book :eq:`eq-flow-cov`)

.. math:: \log q_\theta(x) = \log \mathcal N(f(x); 0, I) + \log\left|\det \frac{\partial f}{\partial x}\right| .

Every transform is an ``nn.Module`` with ``forward(x) -> (z, log|det dz/dx|)`` and
``inverse(z) -> (x, log|det dx/dz|)`` on ``(n, d)`` tensors, so a flow is a list of transforms
plus a base distribution, and the tests loop over all transforms in one list.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.functional import softplus

from .networks import _random, mlp
from .train import Model

__all__ = [
    "Transform",
    "StandardNormal",
    "Affine",
    "MonotoneIntegral",
    "AffineCoupling",
    "Flow",
    "gauss_legendre",
    "nll_loss",
    "monotone_flow",
    "coupling_flow",
    "ConditionalTransform",
    "ConditionalAffine",
    "ConditionalAffineCoupling",
    "ConditionalFlow",
    "conditional_coupling_flow",
]


class Transform(nn.Module):
    """An invertible map of ``(n, d)`` tensors that also returns its log-determinant, ``(n,)``."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x -> (z, log|det dz/dx|)``."""
        raise NotImplementedError

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``z -> (x, log|det dx/dz|)``."""
        raise NotImplementedError


def _check(x: Tensor, dim: int, name: str = "x") -> Tensor:
    if x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(f"{name} must have shape (n, {dim}), got {tuple(x.shape)}")
    return x


class StandardNormal(nn.Module):
    r"""Base distribution :math:`\mathcal N(0, I_d)` with ``log_prob`` ``(n, d) -> (n,)`` and ``sample``."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def log_prob(self, z: Tensor) -> Tensor:
        r""":math:`-\tfrac12\|z\|^2 - \tfrac d2 \log 2\pi` for ``z`` ``(n, d)``; returns ``(n,)``."""
        return -0.5 * (_check(z, self.dim, "z") ** 2).sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)

    def sample(self, n: int, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32) -> Tensor:
        """``(n, d)`` standard normal draws in ``dtype`` (on the generator's device when one is given)."""
        device = None if generator is None else generator.device
        return torch.randn(n, self.dim, generator=generator, dtype=dtype, device=device)


class Affine(Transform):
    r"""Elementwise :math:`z = (x - b)\, e^{-a}`, learnable :math:`a, b \in \R^d`; log-det :math:`-\sum_i a_i`."""

    def __init__(self, dim: int):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = (x - self.loc) * torch.exp(-self.log_scale)
        return z, (-self.log_scale.sum()).expand(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        x = z * torch.exp(self.log_scale) + self.loc
        return x, self.log_scale.sum().expand(z.shape[0])


def gauss_legendre(n_nodes: int) -> tuple[Tensor, Tensor]:
    r"""Gauss-Legendre nodes :math:`s_k` and weights :math:`w_k` on :math:`[0, 1]`, each ``(K,)`` float64.

    :math:`\int_0^1 h(s)\,ds \approx \sum_k w_k h(s_k)`, exact for polynomials of degree
    :math:`< 2K` (book :eq:`eq-flow-quadrature`).
    """
    if n_nodes < 1:
        raise ValueError(f"n_nodes must be >= 1, got {n_nodes}")
    s, w = np.polynomial.legendre.leggauss(n_nodes)
    return torch.from_numpy((s + 1) / 2), torch.from_numpy(w / 2)


class MonotoneIntegral(Transform):
    r"""1D monotone map :math:`f(x) = c + \int_0^x \operatorname{softplus}(g(t))\,dt` (book :eq:`eq-flow-umnn`).

    The integral is :math:`x \sum_k w_k\, h(s_k x)` with ``n_nodes`` Gauss-Legendre nodes
    (:eq:`eq-flow-quadrature`), :math:`h = \operatorname{softplus}\circ g` and :math:`g` a small MLP;
    the log-det is :math:`\log h(x)`. The inverse solves :math:`f(x) = z` by Newton's method kept
    inside a bisection bracket (no gradient flows through it). Shapes ``(n, 1)``.
    """

    def __init__(self, hidden: int = 32, depth: int = 2, n_nodes: int = 16,
                 activation: type[nn.Module] = nn.Tanh):
        super().__init__()
        self.g = mlp(1, 1, hidden, depth, activation)
        self.c = nn.Parameter(torch.zeros(1))
        s, w = gauss_legendre(n_nodes)
        self.register_buffer("nodes", torch.cat([s, torch.ones(1, dtype=s.dtype)]))  # float64
        self.register_buffer("weights", w)

    def integrand(self, t: Tensor) -> Tensor:
        r""":math:`h(t) = \operatorname{softplus}(g(t)) > 0` for ``t`` ``(n, 1)``; returns ``(n, 1)``."""
        return softplus(self.g(t))

    def _f_and_h(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``f(x)`` and ``h(x) = f'(x)`` from one network call on the K nodes and x itself."""
        t = x * self.nodes.to(x)  # (n, K + 1); the last column is x
        h = self.integrand(t.reshape(-1, 1)).reshape(t.shape)  # (n, K + 1)
        f = self.c + x * (h[:, :-1] * self.weights.to(x)).sum(1, keepdim=True)  # (n, 1)
        return f, h[:, -1:]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f, h = self._f_and_h(_check(x, 1))
        return f, h.log()[:, 0]

    @torch.no_grad()
    def inverse(self, z: Tensor, max_iter: int = 100, n_grid: int = 1024) -> tuple[Tensor, Tensor]:
        _check(z, 1, "z")
        lo, hi = -1.0, 1.0  # widen [lo, hi] until f(lo) <= min z and f(hi) >= max z
        for _ in range(200):
            f_lo, f_hi = self._f_and_h(z.new_tensor([[lo], [hi]]))[0][:, 0]
            if f_lo <= z.min() and f_hi >= z.max():
                break
            lo, hi = 2 * lo if f_lo > z.min() else lo, 2 * hi if f_hi < z.max() else hi
        else:
            raise RuntimeError("MonotoneIntegral.inverse: could not bracket the root")
        grid = torch.linspace(lo, hi, n_grid, dtype=z.dtype, device=z.device)[:, None]
        f_grid = self._f_and_h(grid)[0][:, 0].contiguous()  # (n_grid,) increasing
        k = torch.searchsorted(f_grid, z[:, 0].contiguous()).clamp(1, n_grid - 1)  # (n,)
        lo, hi = grid[k - 1], grid[k]  # brackets (n, 1)
        w = ((z[:, 0] - f_grid[k - 1]) / (f_grid[k] - f_grid[k - 1]))[:, None]
        x = lo + w.clamp(0, 1) * (hi - lo)  # linear interpolation: a close start for Newton
        tol = 64 * torch.finfo(z.dtype).eps
        for _ in range(max_iter):
            f, h = self._f_and_h(x)
            r = f - z
            lo, hi = torch.where(r < 0, x, lo), torch.where(r > 0, x, hi)
            newton = x - r / h
            x_new = torch.where((newton < lo) | (newton > hi), (lo + hi) / 2, newton)
            done = bool(((x_new - x).abs() <= tol * (1 + x.abs())).all())
            x = x_new
            if done:
                break
        return x, -self._f_and_h(x)[1].log()[:, 0]


class AffineCoupling(Transform):
    r"""RealNVP coupling :math:`z = m \odot x + (1 - m)\odot(x\, e^{s(m\odot x)} + t(m\odot x))`.

    The binary ``mask`` :math:`m` ``(d,)`` marks the coordinates that pass unchanged and condition the
    others; the Jacobian is triangular, so :math:`\log|\det| = \sum_i (1 - m_i)\, s_i`
    (book :eq:`eq-flow-coupling`). :math:`s = s_{\max} \tanh(\cdot)` keeps each layer's scale bounded.
    The last layer starts at zero, so a new coupling is the identity.
    """

    def __init__(self, mask: Sequence[float] | Tensor, hidden: int = 64, depth: int = 2,
                 s_max: float = 2.0):
        super().__init__()
        mask = torch.as_tensor(mask, dtype=torch.float32)
        if mask.dim() != 1 or not ((mask == 0) | (mask == 1)).all() or mask.all() or not mask.any():
            raise ValueError(f"mask must be a 1D 0/1 vector with both values, got {mask.tolist()}")
        self.register_buffer("mask", mask)
        self.s_max = s_max
        self.net = mlp(len(mask), 2 * len(mask), hidden, depth)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _s_t(self, x: Tensor) -> tuple[Tensor, Tensor]:
        m = self.mask.to(x)
        s, t = self.net(x * m).chunk(2, dim=-1)  # (n, d) each
        return self.s_max * torch.tanh(s / self.s_max) * (1 - m), t * (1 - m)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self._s_t(_check(x, len(self.mask)))
        return x * s.exp() + t, s.sum(-1)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self._s_t(_check(z, len(self.mask), "z"))  # m * z = m * x: same s, t
        return (z - t) * (-s).exp(), -s.sum(-1)


class Flow(Transform, Model):
    r"""Transforms :math:`f_1, \dots, f_L` applied in order, then a base distribution.

    :math:`\log q(x) = \log p_Z(f(x)) + \sum_l \log|\det J_{f_l}|` (book :eq:`eq-flow-composition`);
    sampling runs the inverses backwards on base draws. A :class:`minigen.train.Model`: ``loss`` is
    the negative log-likelihood :func:`nll_loss`; ``recipe`` holds the settings :func:`minigen.train.fit`
    uses by default.
    """

    def __init__(self, transforms: Sequence[Transform], base: StandardNormal,
                 recipe: dict | None = None):
        super().__init__()
        if len(transforms) == 0:
            raise ValueError("a flow needs at least one transform")
        self.transforms = nn.ModuleList(transforms)
        self.base, self.dim = base, base.dim
        self.recipe = dict(recipe or {})

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for tr in self.transforms:
            x, ld = tr(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        logdet = z.new_zeros(z.shape[0])
        for tr in reversed(self.transforms):
            z, ld = tr.inverse(z)
            logdet = logdet + ld
        return z, logdet

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact model log density, ``(n, d) -> (n,)``."""
        z, logdet = self(_check(x, self.base.dim))
        return self.base.log_prob(z) + logdet

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``(n, d)`` model samples: base draws pushed through the inverse transforms, in the
        parameters' dtype and on their device."""
        return self.inverse(_random(torch.randn, (n, self.dim), self._like(), generator))[0]

    def loss(self, x: Tensor) -> Tensor:
        """The negative log-likelihood :func:`nll_loss` of a batch ``(B, d)``."""
        return nll_loss(self, self._check_batch(x))


def nll_loss(flow: Flow, x: Tensor) -> Tensor:
    r"""Negative log-likelihood :math:`-\frac1n\sum_i \log q_\theta(x_i)` of a batch ``(n, d)`` (book :eq:`eq-flow-mle`)."""
    return -flow.log_prob(x).mean()


MONOTONE_RECIPE = dict(n_steps=1_500, batch_size=256, lr=1e-2, schedule="cosine")
COUPLING_RECIPE = dict(n_steps=2_600, batch_size=512, lr=7e-3, schedule="cosine", clip_grad=1.0)


def monotone_flow(hidden: int = 32, depth: int = 2, n_nodes: int = 24) -> Flow:
    """A 1D flow: one :class:`MonotoneIntegral` onto a standard normal base (chapter 3's recipe).

    32 units and 24 quadrature nodes: with 16 and 8 the narrow modes of the four-mode 1D target
    were out of reach (noise-floor ratio 4.7; 1.26 with these), the quadrature too coarse over
    the long interval :math:`[0, x]` to resolve a steep :math:`h`.
    """
    return Flow([MonotoneIntegral(hidden, depth, n_nodes)], StandardNormal(1), MONOTONE_RECIPE)


def coupling_flow(dim: int = 2, n_layers: int = 12, hidden: int = 64, depth: int = 2) -> Flow:
    """An :class:`Affine` standardisation, then ``n_layers`` :class:`AffineCoupling` with alternating
    masks (chapter 3's recipe)."""
    if dim < 2:
        raise ValueError(f"coupling needs dim >= 2, got {dim}")
    transforms: list[Transform] = [Affine(dim)]
    for layer in range(n_layers):
        transforms.append(AffineCoupling((torch.arange(dim) + layer) % 2, hidden, depth))
    return Flow(transforms, StandardNormal(dim), COUPLING_RECIPE)


# Conditional flows: q(x | c) for a context c (an observation, when x is a parameter theta)


def _context(context: Tensor, n: int, k: int, like: Tensor) -> Tensor:
    """``context`` ``(k,)`` broadcast to ``(n, k)``, or ``(n, k)`` checked; in ``like``'s dtype and device."""
    if not isinstance(context, Tensor):
        raise TypeError(f"context must be a tensor (k,) or (n, k), got {type(context).__name__}")
    if context.dim() == 1 and context.shape[0] == k:
        context = context.expand(n, k)
    if context.dim() != 2 or context.shape != (n, k):
        raise ValueError(f"context must have shape ({k},) or ({n}, {k}), got {tuple(context.shape)}")
    return context.to(like)


class ConditionalTransform(nn.Module):
    """An invertible map of ``x`` ``(n, d)`` given a context ``c`` ``(n, k)``; it also returns its
    log-determinant ``(n,)``. The map is invertible in ``x`` for every fixed ``c``."""

    def forward(self, x: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, c) -> (z, log|det dz/dx|)``."""
        raise NotImplementedError

    def inverse(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, c) -> (x, log|det dx/dz|)``."""
        raise NotImplementedError


class ConditionalAffine(ConditionalTransform):
    r"""Elementwise :math:`z = (x - b(c))\, e^{-a(c)}` with :math:`(a, b)` an MLP of the context.

    Log-det :math:`-\sum_i a_i(c)`. It puts a conditional flow at the right place and scale for
    each context before the couplings shape it (book :eq:`eq-npe-conditional-flow`). Shapes:
    ``x`` ``(n, d)``, ``c`` ``(n, k)``. The last layer starts at zero weight, so at initialisation
    :math:`a, b` are the constants of its bias (set from data by :meth:`ConditionalFlow.prepare`).
    """

    def __init__(self, dim: int, context_dim: int, hidden: int = 64, depth: int = 2):
        super().__init__()
        self.dim, self.context_dim = dim, context_dim
        self.net = mlp(context_dim, 2 * dim, hidden, depth)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _a_b(self, x: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        _check(x, self.dim)
        a, b = self.net(_context(context, len(x), self.context_dim, x)).chunk(2, dim=-1)  # (n, d)
        return a, b

    def forward(self, x: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        a, b = self._a_b(x, context)
        return (x - b) * (-a).exp(), -a.sum(-1)

    def inverse(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        a, b = self._a_b(z, context)
        return z * a.exp() + b, a.sum(-1)


class ConditionalAffineCoupling(ConditionalTransform):
    r"""Coupling :math:`z = m\odot x + (1 - m)\odot\big(x\, e^{s(m\odot x,\, c)} + t(m\odot x,\, c)\big)`.

    :class:`AffineCoupling` whose scale and shift networks also read the context :math:`c`
    ``(n, k)``; for each fixed :math:`c` the Jacobian in :math:`x` is triangular, so
    :math:`\log|\det| = \sum_i (1 - m_i)\, s_i(m\odot x, c)` (book :eq:`eq-npe-conditional-flow`).
    :math:`s = s_{\max}\tanh(\cdot)`; the last layer starts at zero (identity at initialisation).
    """

    def __init__(self, mask: Sequence[float] | Tensor, context_dim: int, hidden: int = 64,
                 depth: int = 2, s_max: float = 2.0):
        super().__init__()
        mask = torch.as_tensor(mask, dtype=torch.float32)
        if mask.dim() != 1 or not ((mask == 0) | (mask == 1)).all() or mask.all() or not mask.any():
            raise ValueError(f"mask must be a 1D 0/1 vector with both values, got {mask.tolist()}")
        if context_dim < 1:
            raise ValueError(f"context_dim must be >= 1, got {context_dim}")
        self.register_buffer("mask", mask)
        self.context_dim, self.s_max = context_dim, s_max
        self.net = mlp(len(mask) + context_dim, 2 * len(mask), hidden, depth)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _s_t(self, x: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        m = self.mask.to(x)
        c = _context(context, len(x), self.context_dim, x)  # (n, k)
        s, t = self.net(torch.cat([x * m, c], dim=-1)).chunk(2, dim=-1)  # (n, d) each
        return self.s_max * torch.tanh(s / self.s_max) * (1 - m), t * (1 - m)

    def forward(self, x: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self._s_t(_check(x, len(self.mask)), context)
        return x * s.exp() + t, s.sum(-1)

    def inverse(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self._s_t(_check(z, len(self.mask), "z"), context)  # m * z = m * x: same s, t
        return (z - t) * (-s).exp(), -s.sum(-1)


class ConditionalFlow(ConditionalTransform, Model):
    r"""A conditional density :math:`q(x \mid c)`: conditional transforms, then :math:`\mathcal N(0, I)`.

    :math:`\log q(x\mid c) = \log \mathcal N(f(x; c); 0, I) + \log|\det \partial_x f(x; c)|`
    (book :eq:`eq-npe-conditional-flow`), ``x`` ``(n, d)``, ``c`` ``(n, k)`` or ``(k,)``. The
    context is standardised by buffers ``context_loc``, ``context_scale`` ``(k,)`` that
    :meth:`prepare` sets from the first training batch. A :class:`minigen.train.Model` whose batch
    is a pair ``(x, c)`` (or a dict with keys ``"x"``, ``"context"``): :func:`minigen.train.fit`
    trains it on a tuple of tensors ``(x, c)`` with rows drawn jointly, minimising
    :math:`-\frac1B\sum_i \log q(x_i\mid c_i)` (book :eq:`eq-npe-loss` when :math:`x = \theta`).
    """

    def __init__(self, transforms: Sequence[ConditionalTransform], base: StandardNormal,
                 context_dim: int, recipe: dict | None = None):
        super().__init__()
        if len(transforms) == 0:
            raise ValueError("a flow needs at least one transform")
        if context_dim < 1:
            raise ValueError(f"context_dim must be >= 1, got {context_dim}")
        self.transforms = nn.ModuleList(transforms)
        self.base, self.dim, self.context_dim = base, base.dim, context_dim
        self.register_buffer("context_loc", torch.zeros(context_dim))
        self.register_buffer("context_scale", torch.ones(context_dim))
        self.register_buffer("prepared", torch.tensor(False))
        self.recipe = dict(recipe or {})

    def _c(self, context: Tensor, n: int, like: Tensor) -> Tensor:
        c = _context(context, n, self.context_dim, like)  # (n, k)
        return (c - self.context_loc.to(c)) / self.context_scale.to(c)

    def forward(self, x: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        c, logdet = self._c(context, len(x), x), x.new_zeros(x.shape[0])
        for tr in self.transforms:
            x, ld = tr(x, c)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        c, logdet = self._c(context, len(z), z), z.new_zeros(z.shape[0])
        for tr in reversed(self.transforms):
            z, ld = tr.inverse(z, c)
            logdet = logdet + ld
        return z, logdet

    def log_prob(self, x: Tensor, context: Tensor) -> Tensor:
        r""":math:`\log q(x\mid c)`: ``x`` ``(n, d)``, ``context`` ``(n, k)`` or ``(k,)``; returns ``(n,)``."""
        z, logdet = self(_check(x, self.dim), context)
        return self.base.log_prob(z) + logdet

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, *,
               context: Tensor) -> Tensor:
        """``(n, d)`` draws of :math:`q(x\\mid c)`: one context ``(k,)`` for all ``n`` draws, or one
        context per draw ``(n, k)``; in the parameters' dtype and on their device."""
        z = _random(torch.randn, (n, self.dim), self._like(), generator)
        return self.inverse(z, context)[0]

    def _pair(self, batch: tuple[Tensor, Tensor] | dict) -> tuple[Tensor, Tensor]:
        x, c = (batch["x"], batch["context"]) if isinstance(batch, dict) else batch
        self._check_batch(x, "batch x")
        if not isinstance(c, Tensor) or c.shape != (len(x), self.context_dim):
            shape = tuple(c.shape) if isinstance(c, Tensor) else type(c).__name__
            raise ValueError(f"batch context must have shape ({len(x)}, {self.context_dim}), got {shape}")
        return x, c

    def loss(self, batch: tuple[Tensor, Tensor] | dict) -> Tensor:
        r"""Conditional negative log-likelihood :math:`-\frac1B\sum_i \log q(x_i\mid c_i)` of a batch
        ``(x, c)``, ``x`` ``(B, d)``, ``c`` ``(B, k)`` (a tuple, or a dict with keys ``"x"``, ``"context"``)."""
        x, c = self._pair(batch)
        return -self.log_prob(x, c).mean()

    @torch.no_grad()
    def prepare(self, batch: tuple[Tensor, Tensor] | dict) -> None:
        """Standardise the context by the first batch's mean and standard deviation; start a leading
        :class:`ConditionalAffine` at the batch's mean and log standard deviation of ``x``. Only at
        the first :func:`minigen.train.fit` (``prepared``): a second fit continues the training."""
        x, c = self._pair(batch)
        if bool(self.prepared) or len(x) < 2:
            return
        self.prepared.fill_(True)
        self.context_loc.copy_(c.mean(0))
        self.context_scale.copy_(c.std(0).clamp_min(1e-8))
        first = self.transforms[0]
        if isinstance(first, ConditionalAffine):
            bias = first.net[-1].bias
            bias.copy_(torch.cat([x.std(0).clamp_min(1e-8).log(), x.mean(0)]).to(bias))


CONDITIONAL_RECIPE = dict(n_steps=2_000, batch_size=256, lr=3e-3, schedule="cosine", clip_grad=1.0)


def conditional_coupling_flow(dim: int, context_dim: int, n_layers: int = 6, hidden: int = 64,
                              depth: int = 2) -> ConditionalFlow:
    r"""A conditional flow :math:`q(x\mid c)`, ``x`` ``(n, dim)``, ``c`` ``(n, context_dim)``: a
    :class:`ConditionalAffine`, then ``n_layers`` :class:`ConditionalAffineCoupling` with
    alternating masks (book :eq:`eq-npe-conditional-flow`; chapter 10b's recipe)."""
    if dim < 2:
        raise ValueError(f"coupling needs dim >= 2, got {dim}")
    transforms: list[ConditionalTransform] = [ConditionalAffine(dim, context_dim, hidden, depth)]
    for layer in range(n_layers):
        mask = (torch.arange(dim) + layer) % 2
        transforms.append(ConditionalAffineCoupling(mask, context_dim, hidden, depth))
    return ConditionalFlow(transforms, StandardNormal(dim), context_dim, CONDITIONAL_RECIPE)
