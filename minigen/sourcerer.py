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
replaced by a :class:`Surrogate`, a conditional Gaussian fitted to simulations by
:func:`fit_surrogate`, or by a :class:`SurrogateEnsemble` of several (:func:`fit_ensemble`), and
refined in rounds by :func:`refine_surrogate` on parameters drawn by :func:`proposal_sample`
(chapter 9b).

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

__all__ = ["kl_entropy", "BoxSampler", "lambda_schedule", "source_loss", "Sourcerer", "estimate_source",
           "Surrogate", "fit_surrogate", "SurrogateEnsemble", "fit_ensemble", "proposal_sample",
           "refine_surrogate"]


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


class Surrogate(Simulator, Model):
    r"""A differentiable stand-in for a simulator: a conditional Gaussian with a full covariance,

    .. math:: \tilde x = m_\psi(\theta) + S_\psi(\theta)\, \epsilon, \quad \epsilon \sim N(0, I),
              \qquad \min_\psi \sum_j \tfrac12 \lVert x_j - m_\psi(\theta_j) \rVert^2
              - \log N\big(x_j;\, \mathrm{sg}[m_\psi(\theta_j)],\, S_\psi S_\psi^\top(\theta_j)\big),

    :math:`S_\psi` lower triangular with a positive diagonal, :math:`\mathrm{sg}` a stop-gradient
    (:eq:`eq-sur-gauss`): the mean network learns by least squares (the conditional mean), the
    factor network the covariance of the residuals by likelihood. Both MLPs see :math:`\theta`
    ``(n, dim_theta)`` rescaled from the box to :math:`[-1, 1]`, with ``log_theta=True`` in log
    coordinates, :math:`u = 2 (\log\theta - \log l) / (\log h - \log l) - 1` (a box of positive
    parameters only; chapter 9b), and work on standardised data
    (``x_mean``, ``x_scale`` ``(dim_x,)``, set by :func:`fit_surrogate`); the diagonal of
    :math:`S_\psi` is the exponential of a network output plus ``min_scale``.
    A :class:`minigen.simulators.Simulator` (same box; ``surrogate(theta)`` draws ``(n, dim_x)``,
    differentiable in ``theta``) and a :class:`minigen.train.Model` whose ``loss`` takes a batch
    ``(B, dim_theta + dim_x)`` of pairs :math:`(\theta, x)`. The recipe clips the gradient norm
    at 1: where :math:`S_\psi` sits near its floor a residual of one standard deviation gives a
    gradient :math:`1/\text{min\_scale}^2` times larger than usual, and an unclipped Adam step
    can throw the fit out of a good optimum for good. ``pairs`` ``(n, dim_theta + dim_x)`` keeps
    the simulations it was fitted to (set by :func:`fit_surrogate`, grown by :func:`refine_surrogate`).
    """

    def __init__(self, simulator: Simulator, hidden: int = 64, depth: int = 3, min_scale: float = 1e-3,
                 log_theta: bool = False):
        super().__init__()
        if log_theta and not bool((simulator.low > 0).all()):
            raise ValueError(f"log_theta needs a box of positive parameters, got low = {simulator.low.tolist()}")
        self.log_theta = log_theta
        self.name = f"surrogate of {simulator.name}"
        self.dim_theta, self.dim_x = simulator.dim_theta, simulator.dim_x
        self.dim, self.min_scale = self.dim_theta + self.dim_x, min_scale
        self.source_entropy = getattr(simulator, "source_entropy", math.nan)
        self.register_buffer("low", torch.as_tensor(simulator.low, dtype=torch.float32))
        self.register_buffer("high", torch.as_tensor(simulator.high, dtype=torch.float32))
        self.register_buffer("x_mean", torch.zeros(self.dim_x))
        self.register_buffer("x_scale", torch.ones(self.dim_x))
        self.register_buffer("tril", torch.tril_indices(self.dim_x, self.dim_x))
        self.mean_net = mlp(self.dim_theta, self.dim_x, hidden, depth)
        self.factor_net = mlp(self.dim_theta, self.tril.shape[1], hidden, depth)
        self.recipe = dict(n_steps=2_000, batch_size=512, lr=2e-3, schedule="cosine", clip_grad=1.0)
        self.pairs = torch.empty(0, self.dim)  # the simulations (theta, x) it was fitted to

    def _standard(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``(n, dim_x)`` and lower factor ``(n, dim_x, dim_x)`` of the standardised data."""
        if self.log_theta:  # the box in log coordinates
            u = 2 * (theta.log() - self.low.log()) / (self.high / self.low).log() - 1  # (n, dim_theta)
        else:
            u = 2 * (theta - self.low) / (self.high - self.low) - 1  # (n, dim_theta) in [-1, 1]
        mu, flat = self.mean_net(u), self.factor_net(u)  # (n, dim_x), (n, dim_x (dim_x + 1) / 2)
        factor = flat.new_zeros(len(flat), self.dim_x, self.dim_x)
        factor[:, self.tril[0], self.tril[1]] = flat
        diag = factor.diagonal(dim1=1, dim2=2).clamp_max(5).exp() + self.min_scale  # (n, dim_x)
        return mu, factor.tril(-1) + torch.diag_embed(diag)

    def moments(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        r"""Mean :math:`m_\psi(\theta)` ``(n, dim_x)`` and covariance :math:`S_\psi S_\psi^\top` ``(n, dim_x, dim_x)``."""
        mu, factor = self._standard(theta)
        factor = self.x_scale[:, None] * factor  # diag(x_scale) S
        return self.x_mean + self.x_scale * mu, factor @ factor.transpose(1, 2)

    def log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        r""":math:`\log N(x; m_\psi(\theta), S_\psi S_\psi^\top(\theta))` ``(n,)`` for ``theta`` ``(n, dim_theta)``, ``x`` ``(n, dim_x)``."""
        mu, factor = self._standard(theta)
        z = ((x - self.x_mean) / self.x_scale - mu)[..., None]  # (n, dim_x, 1)
        r = torch.linalg.solve_triangular(factor, z, upper=False)[..., 0]  # S^{-1}(z - mu)
        log_det = factor.diagonal(dim1=1, dim2=2).log().sum(1) + self.x_scale.log().sum()
        return -0.5 * (r**2).sum(1) - log_det - 0.5 * self.dim_x * math.log(2 * math.pi)

    def loss(self, batch: Tensor) -> Tensor:
        batch = self._check_batch(batch)
        theta, x = batch[:, :self.dim_theta], batch[:, self.dim_theta:]
        mu, factor = self._standard(theta)
        z = (x - self.x_mean) / self.x_scale  # (B, dim_x)
        r = torch.linalg.solve_triangular(factor, (z - mu.detach())[..., None], upper=False)[..., 0]
        nll = 0.5 * (r**2).sum(1) + factor.diagonal(dim1=1, dim2=2).log().sum(1)
        return (0.5 * ((z - mu) ** 2).sum(1) + nll).mean()

    def simulate(self, theta: Tensor, generator: torch.Generator | None) -> Tensor:
        mu, factor = self._standard(theta)
        eps = _random(torch.randn, (len(theta), self.dim_x, 1), theta, generator)
        return self.x_mean + self.x_scale * (mu + (factor @ eps)[..., 0])  # (n, dim_x)


def _simulate_pairs(simulator: Simulator, theta: Tensor, generator: torch.Generator | None) -> Tensor:
    """Pairs ``(n, dim_theta + dim_x)`` of ``theta`` ``(n, dim_theta)`` and one simulation each, float32."""
    with torch.no_grad():
        return torch.cat([theta, simulator(theta, generator)], 1).float()


def fit_surrogate(simulator: Simulator, n_sims: int, generator: torch.Generator | None = None,
                  hidden: int = 64, depth: int = 3, min_scale: float = 1e-3, log_theta: bool = False,
                  **fit_kwargs) -> tuple[Surrogate, FitResult]:
    r"""Simulate ``n_sims`` pairs with :math:`\theta \sim U[` ``low, high`` :math:`]` and fit a :class:`Surrogate`.

    Trained on the loss :eq:`eq-sur-gauss` by :func:`minigen.train.fit` (further arguments, such
    as ``n_steps``, ``batch_size``, ``lr``, ``clip_grad``, go there; ``generator`` draws the
    parameters, the simulator's noise and the minibatches). The data are standardised by their
    mean and standard deviation first; ``min_scale`` (in those units) bounds the diagonal of
    :math:`S_\psi` from below, so data on a grid (counts) cannot drive a variance to zero. Returns
    ``(surrogate, fit result)``; the surrogate's weights are frozen
    (``requires_grad=False``), so a :class:`Sourcerer` trained through it moves only its source,
    while gradients still flow to :math:`\theta`. ``surrogate.pairs`` holds the ``n_sims`` simulations.
    """
    if not isinstance(simulator, Simulator) or n_sims < 2:
        raise ValueError(f"need a minigen.simulators.Simulator and n_sims >= 2, got "
                         f"{type(simulator).__name__} and {n_sims}")
    low, high = simulator.low.float(), simulator.high.float()
    theta = low + (high - low) * _random(torch.rand, (n_sims, simulator.dim_theta), low, generator)
    surrogate = Surrogate(simulator, hidden, depth, min_scale, log_theta)
    surrogate.pairs = _simulate_pairs(simulator, theta, generator)  # (n_sims, dim_theta + dim_x)
    x = surrogate.pairs[:, simulator.dim_theta:]
    surrogate.x_mean.copy_(x.mean(0))
    surrogate.x_scale.copy_(x.std(0).clamp_min(1e-6))
    result = fit(surrogate, surrogate.pairs, desc="surrogate", generator=generator, **fit_kwargs)
    return surrogate.requires_grad_(False), result


class SurrogateEnsemble(Simulator, nn.Module):
    r"""The equal mixture of :math:`K` fitted :class:`Surrogate` members (:eq:`eq-sur-ensemble`):

    .. math:: \tilde p(x \mid \theta) = \frac1K \sum_{k=1}^K
              N\big(x;\, m_k(\theta),\, S_k S_k^\top(\theta)\big),

    simulated by drawing, for each row of ``theta`` ``(n, dim_theta)``, a member
    :math:`k \sim U\{1..K\}` and then :math:`\tilde x = m_k(\theta) + S_k(\theta)\epsilon`,
    ``(n, dim_x)``, differentiable in ``theta``. A source trained through it meets every member's
    errors at once, so it gains nothing from one member's error that the others do not share.
    ``members`` share one simulator's box; at least two.
    """

    def __init__(self, members: list[Surrogate]):
        nn.Module.__init__(self)
        if len(members) < 2 or len({(m.dim_theta, m.dim_x) for m in members}) != 1:
            raise ValueError(f"need at least two members of equal dimensions, got {len(members)}")
        self.members = nn.ModuleList(members)
        first = members[0]
        self.name, self.dim_theta, self.dim_x = f"ensemble of {len(members)} surrogates", first.dim_theta, first.dim_x
        self.low, self.high, self.source_entropy = first.low, first.high, first.source_entropy

    def moments(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        r"""Mixture mean :math:`\bar m = \frac1K\sum_k m_k` ``(n, dim_x)`` and covariance
        :math:`\frac1K \sum_k \big(S_k S_k^\top + (m_k - \bar m)(m_k - \bar m)^\top\big)` ``(n, dim_x, dim_x)``."""
        means, covs = zip(*(m.moments(theta) for m in self.members))
        means, covs = torch.stack(means), torch.stack(covs)  # (K, n, dim_x), (K, n, dim_x, dim_x)
        gap = means - means.mean(0)  # (K, n, dim_x)
        return means.mean(0), (covs + gap[..., :, None] * gap[..., None, :]).mean(0)

    def simulate(self, theta: Tensor, generator: torch.Generator | None) -> Tensor:
        xs = torch.stack([m(theta, generator) for m in self.members])  # (K, n, dim_x)
        k = torch.randint(len(self.members), (len(theta),), generator=generator,
                          device=theta.device if generator is None else generator.device).to(theta.device)
        return xs[k, torch.arange(len(theta), device=theta.device)]  # (n, dim_x)


def fit_ensemble(simulator: Simulator, n_sims: int, n_members: int, generator: torch.Generator | None = None,
                 **kwargs) -> tuple[SurrogateEnsemble, list[FitResult]]:
    r"""Fit ``n_members`` surrogates by :func:`fit_surrogate`, each on its own ``n_sims`` simulations
    (:math:`\theta` uniform in the box), with its own initial weights (torch's global generator)
    and minibatches; ``kwargs`` go to :func:`fit_surrogate`. Returns the :class:`SurrogateEnsemble`
    (:eq:`eq-sur-ensemble`; ``n_members * n_sims`` simulations in all) and the fit results.
    """
    if n_members < 2:
        raise ValueError(f"an ensemble needs n_members >= 2, got {n_members}")
    members, results = zip(*(fit_surrogate(simulator, n_sims, generator, **kwargs) for _ in range(n_members)))
    return SurrogateEnsemble(list(members)), list(results)


def proposal_sample(source: BoxSampler, n: int, box_fraction: float,
                    generator: torch.Generator | None = None) -> Tensor:
    r"""``n`` parameters ``(n, d)`` from the next round's proposal, the source widened by the box:

    .. math:: \tilde p(\theta) = (1 - w)\, s(\theta) + w\, U(\theta;\, [l, h]),

    :math:`w` = ``box_fraction`` (:eq:`eq-sur-proposal`): the first :math:`\lfloor (1 - w) n \rceil`
    rows from the source, the rest uniform in its box, so the surrogate keeps seeing the whole box
    while its new simulations go where the source is. Drawn without gradients.
    """
    if not 0 <= box_fraction <= 1 or n < 1:
        raise ValueError(f"need 0 <= box_fraction <= 1 and n >= 1, got {box_fraction} and {n}")
    n_box = round(box_fraction * n)
    with torch.no_grad():
        from_source = source.sample(n - n_box, generator)  # (n - n_box, d)
        box = source.low + (source.high - source.low) * _random(torch.rand, (n_box, len(source.low)),
                                                                 source.low, generator)
    return torch.cat([from_source, box])


def refine_surrogate(surrogate: Surrogate, simulator: Simulator, theta: Tensor,
                     generator: torch.Generator | None = None, **fit_kwargs) -> FitResult:
    r"""One round of sequential fitting: simulate at ``theta`` ``(n, dim_theta)``, add the pairs to
    ``surrogate.pairs`` and train the surrogate further on all of them (:eq:`eq-sur-rounds`).

    The loss is :eq:`eq-sur-gauss` over every simulation so far, so new simulations sharpen the
    fit where they lie without the surrogate forgetting the rest of the box; training starts from
    the current weights and keeps the standardisation of the first round. Further arguments
    (``n_steps``, ``lr``, ...) go to :func:`minigen.train.fit`; the surrogate is frozen again
    afterwards. Returns the fit result; the surrogate is changed in place.
    """
    if theta.dim() != 2 or theta.shape[1] != surrogate.dim_theta:
        raise ValueError(f"theta must be (n, {surrogate.dim_theta}), got {tuple(theta.shape)}")
    new = _simulate_pairs(simulator, theta, generator)  # (n, dim_theta + dim_x)
    surrogate.pairs = torch.cat([surrogate.pairs, new.to(surrogate.pairs)])
    surrogate.requires_grad_(True)
    try:
        return fit(surrogate, surrogate.pairs, desc="surrogate round", generator=generator, **fit_kwargs)
    finally:
        surrogate.requires_grad_(False)
