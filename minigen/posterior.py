r"""Neural posterior estimation and the calibration of its credible regions (chapter 10b).

A conditional flow :math:`q(\theta\mid x)` (:func:`minigen.flows.conditional_coupling_flow`) is
trained on pairs :math:`(\theta, x)` drawn from the prior and the simulator by minimising
:math:`-\E\log q(\theta\mid x)` (book :eq:`eq-npe-loss`). Whether its credible regions mean what
they say is measured by the *expected coverage* of its highest-posterior-density (HPD) regions
(book :eq:`eq-npe-coverage`): over pairs :math:`(\theta^*, x^*)` from the prior predictive, the
:math:`(1 - \alpha)` HPD region of :math:`q(\cdot\mid x^*)` should contain :math:`\theta^*` a
fraction :math:`1 - \alpha` of the time. A :class:`GridPosterior` is the exact reference for a
low-dimensional parameter: the prior times the likelihood on a regular grid, normalised.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from .flows import ConditionalFlow
from .networks import _random

__all__ = ["GridPosterior", "grid_posterior", "hpd_levels", "coverage", "expected_coverage",
           "coverage_log_probs", "binomial_band"]


@dataclass
class GridPosterior:
    r"""A posterior tabulated on a regular grid: ``points`` ``(G, d)``, ``log_prob`` ``(G,)``.

    ``log_prob`` is the normalised log density at the cell centres, :math:`\sum_g e^{\log p_g}\,
    \Delta = 1` with ``cell`` :math:`\Delta` the cell volume; ``log_z`` is the log normaliser
    :math:`\log \sum_g \tilde p_g \Delta` of the unnormalised log joint :math:`\log\tilde p`
    (the log evidence :math:`\log p(x)`), so the exact log posterior at any point is
    :math:`\log\tilde p(\theta) - \log Z`. ``lows``, ``steps`` and ``sizes`` ``(d,)`` locate a
    point's cell. Sampling draws a cell by its mass, then a uniform point in it.
    """

    points: Tensor
    log_prob: Tensor
    log_z: Tensor
    lows: Tensor
    steps: Tensor
    sizes: Tensor

    @property
    def cell(self) -> Tensor:
        """The volume of one grid cell, a 0-d tensor."""
        return self.steps.prod()

    def index(self, theta: Tensor) -> Tensor:
        """The flat index ``(n,)`` of the cell nearest to each ``theta`` ``(n, d)`` (clamped to the grid)."""
        k = ((theta.to(self.lows) - self.lows) / self.steps).round().long()  # (n, d)
        k = torch.minimum(k.clamp_min(0), self.sizes - 1)
        strides = torch.cumprod(torch.cat([self.sizes.flip(0)[:-1].new_ones(1),
                                           self.sizes.flip(0)[:-1]]), 0).flip(0)  # row-major
        return (k * strides).sum(-1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``(n, d)`` draws: a cell by its mass, then uniformly within the cell."""
        weights = (self.log_prob - self.log_prob.max()).exp()
        k = torch.multinomial(weights, n, replacement=True, generator=generator)
        jitter = _random(torch.rand, (n, self.points.shape[1]), self.points, generator) - 0.5
        return self.points[k] + jitter * self.steps

    def hpd_level(self, theta: Tensor) -> Tensor:
        r"""The mass of the grid cells denser than ``theta``'s cell, ``(n, d) -> (n,)``: the smallest
        credibility level whose HPD region contains ``theta`` (book :eq:`eq-npe-rank`)."""
        mass = self.log_prob.exp() * self.cell  # (G,)
        at = self.log_prob[self.index(theta)]  # (n,)
        order = self.log_prob.sort().values  # (G,) ascending
        above = mass.sort().values.flip(0).cumsum(0).flip(0)  # mass of cells >= each sorted value
        k = torch.searchsorted(order, at, right=True)  # first cell strictly denser
        return torch.cat([above, above.new_zeros(1)])[k]


def grid_posterior(log_joint: Callable[[Tensor], Tensor], bounds: Sequence[tuple[float, float]],
                   n: int = 301) -> GridPosterior:
    r"""Tabulate :math:`p(\theta\mid x) \propto p(\theta)\, p(x\mid\theta)` on an ``n``-point-per-axis grid.

    ``log_joint`` maps grid points ``(G, d)`` to :math:`\log p(\theta) + \log p(x\mid\theta)`
    ``(G,)`` for the observation at hand; ``bounds`` gives ``(low, high)`` per axis and should
    hold all but a negligible part of the posterior mass. Computes in float64.
    """
    if n < 2:
        raise ValueError(f"n must be >= 2 points per axis, got {n}")
    if any(not hi > lo for lo, hi in bounds):
        raise ValueError(f"each bound must be (low, high) with high > low, got {list(bounds)}")
    axes = [torch.linspace(lo, hi, n, dtype=torch.float64) for lo, hi in bounds]
    points = torch.cartesian_prod(*axes).reshape(-1, len(axes))  # (n^d, d), row-major
    lows = torch.tensor([lo for lo, _ in bounds], dtype=torch.float64)
    steps = torch.stack([a[1] - a[0] for a in axes])
    log_p = log_joint(points).to(torch.float64)  # (G,)
    if log_p.shape != (len(points),):
        raise ValueError(f"log_joint must map ({len(points)}, {len(axes)}) to ({len(points)},), "
                         f"got {tuple(log_p.shape)}")
    log_z = torch.logsumexp(log_p, 0) + steps.prod().log()
    return GridPosterior(points, log_p - log_z, log_z, lows, steps, torch.full((len(axes),), n))


def hpd_levels(log_q_true: Tensor, log_q_samples: Tensor) -> Tensor:
    r"""Credibility level of the smallest HPD region that contains :math:`\theta^*_j` (book :eq:`eq-npe-rank`).

    .. math:: \hat\gamma_j = \frac1N \sum_{i=1}^N \mathbf 1\big[q(\theta_{ji}\mid x_j) > q(\theta^*_j\mid x_j)\big],
              \qquad \theta_{ji} \sim q(\cdot\mid x_j),

    from ``log_q_true`` :math:`\log q(\theta^*_j\mid x_j)` ``(M,)`` and ``log_q_samples``
    :math:`\log q(\theta_{ji}\mid x_j)` ``(M, N)``; returns ``(M,)`` in :math:`[0, 1]`. For the exact
    posterior and :math:`(\theta^*_j, x_j)` from the prior predictive, :math:`\hat\gamma_j` is uniform.
    """
    if log_q_samples.dim() != 2 or log_q_true.shape != (log_q_samples.shape[0],):
        raise ValueError(f"log_q_true must be (M,) and log_q_samples (M, N), got "
                         f"{tuple(log_q_true.shape)} and {tuple(log_q_samples.shape)}")
    return (log_q_samples > log_q_true[:, None]).to(log_q_samples.dtype).mean(1)


def coverage(gamma: Tensor, levels: Sequence[float] | Tensor) -> Tensor:
    r"""Fraction of HPD levels :math:`\gamma_j` ``(M,)`` below each nominal level ``(L,)`` (book :eq:`eq-npe-coverage`).

    .. math:: \widehat{\mathrm{cov}}(1 - \alpha) = \frac1M \sum_{j=1}^M \mathbf 1\big[\gamma_j < 1 - \alpha\big];

    ``levels`` are the nominal levels :math:`1 - \alpha \in (0, 1)`; returns ``(L,)`` in ``gamma``'s dtype.
    """
    if gamma.dim() != 1:
        raise ValueError(f"gamma must be (M,), got {tuple(gamma.shape)}")
    levels = torch.as_tensor(levels, dtype=gamma.dtype, device=gamma.device).reshape(-1)  # (L,)
    if not ((levels > 0) & (levels < 1)).all():
        raise ValueError(f"levels must lie in (0, 1), got {levels.tolist()}")
    return (gamma[None, :] < levels[:, None]).to(gamma.dtype).mean(1)


def expected_coverage(log_q_true: Tensor, log_q_samples: Tensor,
                      levels: Sequence[float] | Tensor) -> Tensor:
    r"""Empirical expected coverage of the HPD regions of :math:`q` at each level (book :eq:`eq-npe-coverage`).

    .. math:: \widehat{\mathrm{cov}}(1 - \alpha) = \frac1M \sum_{j=1}^M \mathbf 1\big[\hat\gamma_j < 1 - \alpha\big],

    :func:`coverage` of the levels :math:`\hat\gamma_j` of :func:`hpd_levels` (``log_q_true``
    ``(M,)``, ``log_q_samples`` ``(M, N)``), at the nominal ``levels`` ``(L,)`` in :math:`(0, 1)`;
    returns ``(L,)``. Calibrated: equal to ``levels``; below: overconfident; above: conservative.
    """
    return coverage(hpd_levels(log_q_true, log_q_samples), levels)


@torch.no_grad()
def coverage_log_probs(flow: ConditionalFlow, theta_true: Tensor, x: Tensor, n_samples: int = 500,
                       generator: torch.Generator | None = None,
                       chunk: int = 100_000) -> tuple[Tensor, Tensor]:
    r"""The inputs of :func:`expected_coverage` for a conditional flow :math:`q(\theta\mid x)`.

    For each pair :math:`(\theta^*_j, x_j)` (``theta_true`` ``(M, d)``, ``x`` ``(M, k)``) draws
    ``n_samples`` :math:`\theta_{ji} \sim q(\cdot\mid x_j)` and returns
    :math:`\log q(\theta^*_j\mid x_j)` ``(M,)`` and :math:`\log q(\theta_{ji}\mid x_j)` ``(M, N)``,
    in batches of at most ``chunk`` flow evaluations.
    """
    if theta_true.dim() != 2 or x.dim() != 2 or len(theta_true) != len(x):
        raise ValueError(f"theta_true must be (M, d) and x (M, k) with equal M, got "
                         f"{tuple(theta_true.shape)} and {tuple(x.shape)}")
    like = flow._like()
    theta_true, x = theta_true.to(like), x.to(like)
    per = max(1, chunk // n_samples)  # observations per batch
    rows = []
    for j in range(0, len(x), per):
        c = x[j:j + per].repeat_interleave(n_samples, 0)  # (m N, k)
        theta = flow.sample(len(c), generator, context=c)  # (m N, d)
        rows.append(flow.log_prob(theta, c).reshape(-1, n_samples))  # (m, N)
    return flow.log_prob(theta_true, x), torch.cat(rows)


def binomial_band(levels: Sequence[float] | Tensor, n_obs: int,
                  width: float = 0.95) -> tuple[Tensor, Tensor]:
    r"""Central ``width`` interval of the coverage of a calibrated posterior over ``n_obs`` observations.

    The count of covered observations is :math:`\mathrm{Binomial}(M, 1 - \alpha)`; returns the
    lower and upper quantiles divided by :math:`M`, each ``(L,)`` float64, for ``levels`` ``(L,)``.
    """
    if n_obs < 1 or not 0 < width < 1:
        raise ValueError(f"need n_obs >= 1 and 0 < width < 1, got {n_obs}, {width}")
    p = torch.as_tensor(levels, dtype=torch.float64).reshape(-1, 1)  # (L, 1)
    k = torch.arange(n_obs + 1, dtype=torch.float64)  # (M + 1,)
    cdf = torch.distributions.Binomial(n_obs, probs=p).log_prob(k).exp().cumsum(1)  # (L, M + 1)
    lo = (cdf < (1 - width) / 2).sum(1)  # first k with cdf >= (1 - width) / 2
    hi = (cdf < (1 + width) / 2).sum(1)
    return lo.to(torch.float64) / n_obs, hi.to(torch.float64) / n_obs
