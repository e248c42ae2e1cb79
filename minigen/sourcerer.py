r"""Maximum-entropy source distribution estimation (Sourcerer; chapter 9).

Given observations :math:`x_i \sim p_0` from a simulator :math:`x = f(\theta, \xi)`, each with its
own unknown :math:`\theta`, find a source :math:`s(\theta)` on a box whose pushforward
:math:`s^\# = f_\# s` matches :math:`p_0`, and among those the one of largest entropy:

.. math:: \min_s\; \mathcal L_\lambda(s) = (1 - \lambda) \log SW_2(s^\#, p_0) - \lambda H(s).

:math:`H` is estimated with the Kozachenko-Leonenko estimator :func:`kl_entropy`, :math:`SW_2`
with :func:`minigen.metrics.sliced_wasserstein`; the source is a :class:`BoxSampler` and
:math:`\lambda` follows :func:`lambda_schedule`. :class:`Sourcerer` (the source pushed through the
simulator, a generative model of the observations) puts them together for
:func:`minigen.train.fit`, and :func:`estimate_source` runs it. A simulator without gradients is
replaced by a learned stand-in from :mod:`minigen.surrogates` (chapter 9b).

Inputs are checked: :func:`kl_entropy` takes a finite, non-empty sample ``(n, d)`` and warns
about exact duplicates (see there); :func:`estimate_source` needs a
:class:`minigen.simulators.Simulator` (a plain function raises ``TypeError`` saying how to wrap
it). Tensors that combine must share a dtype, else ``ValueError`` naming both; a ``period`` given
as numbers is converted to the sample's dtype.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from .metrics import sliced_wasserstein
from .networks import _finite, _random, _same_dtype, mlp
from .simulators import Simulator
from .train import FitResult, Model, fit

__all__ = ["kl_entropy", "BoxSampler", "lambda_schedule", "source_loss", "Sourcerer", "estimate_source"]


def kl_entropy(x: Tensor, period: Tensor | None = None, chunk: int = 2048) -> Tensor:
    r"""Kozachenko-Leonenko estimate of the differential entropy of a sample ``x`` ``(n, d)``.

    .. math:: \hat H = \frac dn \sum_i \log \varepsilon_i + \log V_d - \psi(1) + \psi(n),

    :math:`\varepsilon_i` the distance from :math:`x_i` to its nearest neighbour and
    :math:`V_d = \pi^{d/2} / \Gamma(1 + d/2)` the volume of the unit ball (:eq:`eq-src-kl`).
    With ``period`` ``(d,)`` distances are taken on the torus of those side lengths (a box whose
    opposite faces are glued): the estimate then has no boundary effect, and maximising it does not
    push samples against the walls of the box (:eq:`eq-src-torus`). Differentiable in ``x``;
    nearest neighbours are found ``chunk`` rows at a time, so 10,000 points need no
    :math:`n \times n` matrix in memory, or, for more than ``chunk`` points on the CPU without
    ``period``, by a k-d tree (SciPy), which gives the same neighbours. Returns a 0-d tensor (nats).

    Exact duplicates have :math:`\varepsilon_i = 0` and no finite estimate; the distance is then
    clamped at :math:`10^{-30}`, so each duplicated point contributes
    :math:`d \log 10^{-30} / n = -69.08\, d / n` nats: the value stays finite and reproducible but
    is no longer an entropy estimate, and a ``RuntimeWarning`` names how many points are
    duplicated (jitter or deduplicate the sample first).
    ``x`` must be finite with ``n >= 2``; ``period`` positive with one entry per dimension.
    """
    if x.dim() != 2 or x.shape[0] < 2 or x.shape[1] == 0:
        raise ValueError(f"x must be (n, d) with n >= 2 and d >= 1, got {tuple(x.shape)}")
    _finite(x, "x")
    n, d = x.shape
    def wrap(diff: Tensor) -> Tensor:
        return diff if period is None else diff - period * torch.round(diff / period)

    if period is not None:
        if isinstance(period, Tensor):
            _same_dtype(x=x, period=period)
        period = torch.as_tensor(period, dtype=x.dtype, device=x.device)
        if period.shape != (d,) or not bool((period > 0).all() & torch.isfinite(period).all()):
            raise ValueError(f"period must hold {d} positive side lengths (d,), got {period.tolist()}")
    eps = wrap(x - x[_nearest_neighbours(x, period, chunk)]).norm(dim=1)  # (n,)
    n_dup = int((eps == 0).sum())
    if n_dup:
        warnings.warn(f"kl_entropy: {n_dup} of {n} points have an exact duplicate (nearest-neighbour "
                      f"distance 0); their distance is clamped at 1e-30, so they contribute "
                      f"{-d * 69.0776 * n_dup / n:.3g} nats to the estimate. Jitter or deduplicate the sample.",
                      RuntimeWarning, stacklevel=2)
    log_vd = 0.5 * d * math.log(math.pi) - math.lgamma(1 + 0.5 * d)
    digamma = torch.special.digamma(torch.tensor([1.0, float(n)], dtype=torch.float64))
    return d * eps.clamp_min(1e-30).log().mean() + log_vd + float(digamma[1] - digamma[0])


def _nearest_neighbours(x: Tensor, period: Tensor | None, chunk: int) -> Tensor:
    """Index ``(n,)`` of each row's nearest other row of ``x`` ``(n, d)`` (on the torus if ``period``)."""
    n, d = x.shape
    if period is None and x.device.type == "cpu" and n > chunk:  # a k-d tree beats the brute-force search
        from scipy.spatial import cKDTree
        points = x.detach().double().numpy()
        _, idx = cKDTree(points).query(points, k=2)  # (n, 2): the point itself, then its neighbour
        nearest = torch.from_numpy(idx[:, 1].copy())
        swapped = torch.from_numpy(idx[:, 0] != np.arange(n))  # duplicates may come in either order
        nearest[swapped] = torch.from_numpy(idx[:, 0].copy())[swapped]
        return nearest
    with torch.no_grad():
        nearest = []
        for start in range(0, n, chunk):
            block = x[start:start + chunk]
            if period is None:
                dist = torch.cdist(block, x)  # (c, n)
            else:  # squared torus distance, one coordinate at a time: (c, n) memory only
                dist = torch.zeros(len(block), n, dtype=x.dtype, device=x.device)
                for k in range(d):
                    gap = (block[:, k, None] - x[None, :, k]).abs()
                    dist += torch.minimum(gap, period[k] - gap) ** 2
            rows = torch.arange(dist.shape[0], device=x.device)
            dist[rows, rows + start] = math.inf
            nearest.append(dist.argmin(1))
    return torch.cat(nearest)


class BoxSampler(nn.Module):
    r"""A source kept inside a box: :math:`\theta = l + (h - l)\,\sigma(g_\phi(\epsilon))`, :math:`\epsilon \sim N(0, I)`.

    ``low, high`` ``(d,)``; :math:`g_\phi` is an MLP (``depth`` hidden layers of ``hidden`` units)
    and :math:`\sigma` the logistic sigmoid, so every sample lies in the open box (:eq:`eq-src-sampler`).
    """

    def __init__(self, low: Tensor, high: Tensor, hidden: int = 100, depth: int = 4,
                 noise_dim: int | None = None):
        super().__init__()
        low, high = torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32)
        if low.shape != high.shape or low.dim() != 1 or (high <= low).any():
            raise ValueError(f"need 1D low < high of equal shape, got {low.tolist()}, {high.tolist()}")
        self.register_buffer("low", low)
        self.register_buffer("high", high)
        self.noise_dim = noise_dim or low.numel()
        self.net = mlp(self.noise_dim, low.numel(), hidden, depth, activation=nn.ReLU)

    def forward(self, eps: Tensor) -> Tensor:
        """Map noise ``(n, noise_dim)`` to parameters ``(n, d)`` inside the box."""
        return self.low + (self.high - self.low) * torch.sigmoid(self.net(eps))

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` parameters ``(n, d)`` (noise in the box's dtype, on its device)."""
        return self(_random(torch.randn, (n, self.noise_dim), self.low, generator))


def lambda_schedule(n_steps: int, n_decay: int, final: float) -> Tensor:
    r""":math:`\lambda_k`: linear from 1 to ``final`` over ``n_decay`` steps, then constant; ``(n_steps,)``.

    Starting at :math:`\lambda = 1` spreads the source over the box before the data term pulls it
    in (:eq:`eq-src-loss`).
    """
    if not 0 <= final <= 1 or n_decay > n_steps:
        raise ValueError(f"need 0 <= final <= 1 and n_decay <= n_steps, got {final}, {n_decay}, {n_steps}")
    ramp = torch.linspace(1.0, final, n_decay) if n_decay > 0 else torch.empty(0)
    return torch.cat([ramp, torch.full((n_steps - n_decay,), float(final))])


def source_loss(source: BoxSampler, simulator: Callable[[Tensor], Tensor], x_obs: Tensor,
                lam: float, n_entropy: int = 512, n_projections: int = 500) -> tuple[Tensor, Tensor, Tensor]:
    r"""Sourcerer loss :math:`(1 - \lambda) \log SW_2(s^\#, p_0) - \lambda \hat H(s)` (:eq:`eq-src-loss`).

    ``x_obs`` ``(m, dim_x)`` is the batch of observations; the pushforward uses as many source
    draws as there are observations, the entropy ``n_entropy`` more, on the torus of the box.
    Returns
    ``(loss, log_sw, entropy)``, 0-d tensors.
    """
    x_sim = simulator(source.sample(x_obs.shape[0]))
    log_sw = sliced_wasserstein(x_sim, x_obs, n_projections=n_projections).log()
    entropy = (kl_entropy(source.sample(n_entropy), period=source.high - source.low)
               if lam > 0 else log_sw.new_zeros(()))
    return (1 - lam) * log_sw - lam * entropy, log_sw, entropy


class Sourcerer(Model):
    r"""The pushforward :math:`s^\# = f_\# s` of a :class:`BoxSampler` source through a simulator,
    fitted to observations by the Sourcerer loss (:eq:`eq-src-loss`): a :class:`minigen.train.Model`.

    ``loss(x_obs)`` is :func:`source_loss` on a batch of observations ``(B, dim_x)`` with
    :math:`\lambda_k` = ``lambdas[k]`` at training step :math:`k` (the last value after the
    schedule ends), plus :math:`\tfrac{w}{2} \lVert\phi\rVert^2` on the sampler's weights with
    :math:`w` = ``weight_decay``, whose gradient is Adam's (coupled) weight decay. The step counter
    restarts when :func:`minigen.train.fit` starts (:meth:`prepare`) and advances after each step.
    ``sample(n)`` simulates from ``n`` source draws, ``(n, dim_x)``; the pushforward has no
    tractable density. The recipe: batches of 1,000, Adam at :math:`10^{-3}` decaying along a
    cosine, one step per entry of ``lambdas``.
    """

    def __init__(self, source: BoxSampler, simulator: Callable[[Tensor], Tensor], lambdas: Tensor,
                 n_entropy: int = 512, n_projections: int = 100, weight_decay: float = 1e-5,
                 recipe: dict | None = None):
        super().__init__()
        if lambdas.dim() != 1 or len(lambdas) == 0:
            raise ValueError(f"lambdas must be a non-empty 1D schedule, got shape {tuple(lambdas.shape)}")
        self.source, self.simulator, self.lambdas = source, simulator, lambdas
        self.dim, self.step = simulator.dim_x, 0
        self.n_entropy, self.n_projections, self.weight_decay = n_entropy, n_projections, weight_decay
        self.recipe = dict(n_steps=len(lambdas), batch_size=1_000, lr=1e-3, schedule="cosine",
                           **(recipe or {}))

    def prepare(self, batch: Tensor) -> None:
        self.step = 0

    def after_step(self) -> None:
        self.step += 1

    def loss(self, x_obs: Tensor) -> Tensor:
        lam = float(self.lambdas[min(self.step, len(self.lambdas) - 1)])
        loss = source_loss(self.source, self.simulator, self._check_batch(x_obs, "x_obs"), lam,
                           self.n_entropy, self.n_projections)[0]
        decay = sum((p**2).sum() for p in self.source.parameters())
        return loss + 0.5 * self.weight_decay * decay

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.simulator(self.source.sample(n, generator), generator)


def estimate_source(simulator: Simulator, x_obs: Tensor, final_lambda: float | None, n_steps: int = 400,
                    decay: float = 0.1, hidden: int = 64, depth: int = 3, n_entropy: int = 512,
                    n_projections: int = 100, weight_decay: float = 1e-5,
                    **fit_kwargs) -> tuple[BoxSampler, FitResult]:
    r"""Fit a :class:`BoxSampler` in ``simulator.low, high`` to ``x_obs`` ``(m, dim_x)``.

    ``final_lambda=None`` drops the entropy term (:math:`\lambda = 0` throughout); otherwise
    :math:`\lambda` decays from 1 to ``final_lambda`` over the first ``decay`` fraction of the
    ``n_steps`` (:func:`lambda_schedule`). Trains a :class:`Sourcerer` with
    :func:`minigen.train.fit` on minibatches of ``x_obs`` drawn with replacement; further
    arguments (``batch_size``, ``lr``, ``generator``, ...) go to ``fit``. Returns
    ``(source, fit result)``; the result's ``losses`` ``(n_steps, 1)`` is the loss per step.

    ``simulator`` must be a :class:`minigen.simulators.Simulator` (it carries the box ``low``,
    ``high``); a plain function raises ``TypeError``.
    """
    if not isinstance(simulator, Simulator):
        raise TypeError(
            f"simulator must be a minigen.simulators.Simulator (it carries the box low, high), got "
            f"{type(simulator).__name__} {getattr(simulator, '__name__', '')!s}. To wrap a function "
            f"f(theta) -> x, subclass Simulator: set name, dim_theta, dim_x, low, high (tensors "
            f"(dim_theta,)) and define simulate(self, theta, generator) returning f(theta).")
    source = BoxSampler(simulator.low, simulator.high, hidden=hidden, depth=depth)
    lambdas = (torch.zeros(n_steps) if final_lambda is None
               else lambda_schedule(n_steps, int(decay * n_steps), final_lambda))
    model = Sourcerer(source, simulator, lambdas, n_entropy, n_projections, weight_decay)
    return source, fit(model, x_obs, n_steps, desc="source", **fit_kwargs)
