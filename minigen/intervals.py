r"""Frequentist intervals from a likelihood (ratio) on a grid, and their coverage (chapter 10).

The profile statistic :math:`q(\theta) = 2[\max_{\theta'} \ell(\theta') - \ell(\theta)]`
(:func:`likelihood_ratio_statistic`) gives Wilks intervals :math:`\{q \le F^{-1}_{\chi^2_1}\}`
(:func:`wilks_interval`, :func:`likelihood_interval`), right when :math:`q` at the truth is
:math:`\chi^2_1`; Neyman's construction (:func:`neyman_belt`, :func:`neyman_interval`) calibrates
the cut on toy data at every grid point, so its coverage holds whatever the statistic, a learned
one included (:func:`minigen.sbi.log_ratio_grid` evaluates a learned ratio on the grid).
:func:`interval_coverage` counts how often intervals hold the truth. Grids are increasing 1D
tensors ``(m,)``; curves are ``(m,)`` or a batch ``(T, m)``; bad shapes and levels outside
(0, 1) raise ``ValueError`` naming them.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["likelihood_interval", "likelihood_ratio_statistic", "wilks_interval", "neyman_belt",
           "neyman_interval", "interval_coverage"]


def _chi2_1_quantile(level: float) -> float:
    """The ``level`` quantile of :math:`\\chi^2_1`: :math:`(\\sqrt2\\,\\mathrm{erf}^{-1}(\\text{level}))^2`."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    return float(2 * torch.special.erfinv(torch.tensor(level, dtype=torch.float64)) ** 2)


def _check_curves(theta: Tensor, curves: Tensor, name: str) -> None:
    if theta.dim() != 1 or curves.dim() not in (1, 2) or curves.shape[-1] != len(theta) or len(theta) < 2:
        raise ValueError(f"theta must be a grid (m,) with m >= 2 and {name} (m,) or (T, m) on it, got "
                         f"shapes {tuple(theta.shape)} and {tuple(curves.shape)}")
    if not bool((theta[1:] > theta[:-1]).all()):
        raise ValueError("theta must be strictly increasing")


def likelihood_interval(theta: Tensor, log_lik: Tensor, level: float = 0.6827) -> tuple[float, float, float]:
    r"""Maximum-likelihood estimate and the interval :math:`\{\theta: 2[\ell(\hat\theta) - \ell(\theta)] \le q\}`.

    ``theta`` ``(m,)`` is an increasing grid and ``log_lik`` ``(m,)`` the log likelihood (up to a
    constant) on it; :math:`q` is the ``level`` quantile of :math:`\chi^2_1` (Wilks' theorem,
    :eq:`eq-sbi-wilks`), 1 for 68.27%. Interval ends are linearly interpolated. Returns
    ``(mle, low, high)``; :func:`wilks_interval` does the same for a batch of curves.
    """
    if theta.shape != log_lik.shape or theta.dim() != 1:
        raise ValueError("theta and log_lik must be 1D of equal length")
    low, high = wilks_interval(theta, log_lik, level)
    return float(theta[log_lik.argmax()]), float(low), float(high)


def likelihood_ratio_statistic(log_lik: Tensor) -> Tensor:
    r"""The profile test statistic :math:`q(\theta) = -2\log\lambda(\theta) = 2[\max_{\theta'} \ell(\theta') - \ell(\theta)]`.

    ``log_lik`` ``(m,)`` or ``(T, m)``: log likelihoods (up to a constant per row) on a grid of
    :math:`\theta`; the maximum is over the grid. Returns the same shape, zero at each row's
    maximum (:eq:`eq-sbi-q`).
    """
    return 2 * (log_lik.max(dim=-1, keepdim=True).values - log_lik)


def wilks_interval(theta: Tensor, log_lik: Tensor, level: float = 0.6827) -> tuple[Tensor, Tensor]:
    r"""Wilks intervals :math:`\{\theta : q(\theta) \le F^{-1}_{\chi^2_1}(\text{level})\}` for a batch of curves.

    Wilks' theorem: at the true :math:`\theta`, :math:`q(\theta) \to \chi^2_1` in distribution
    as the number of events grows (:eq:`eq-sbi-wilks`). ``theta`` ``(m,)`` increasing grid,
    ``log_lik`` ``(T, m)`` or ``(m,)``; returns ``(low, high)``, each ``(T,)`` (or 0-d): the
    smallest interval holding every grid point inside the cut, ends linearly interpolated.
    """
    _check_curves(theta, log_lik, "log_lik")
    cut = torch.full_like(theta, _chi2_1_quantile(level), dtype=torch.float64)
    return neyman_interval(theta, likelihood_ratio_statistic(log_lik.double()), cut)


def neyman_belt(q_at_truth: Tensor, level: float = 0.6827) -> Tensor:
    r"""Neyman's acceptance cut :math:`c(\theta_j)`: the ``level`` quantile of :math:`q(\theta_j)` under :math:`\theta_j`.

    ``q_at_truth`` ``(B, m)``: column ``j`` holds the statistic :math:`q(\theta_j)` on ``B`` toy
    data sets simulated at :math:`\theta_j`. The acceptance region of the test of
    :math:`\theta_j` is :math:`\{q(\theta_j) \le c(\theta_j)\}`, of probability ``level``
    under :math:`\theta_j` whatever the statistic (:eq:`eq-sbi-neyman`). Returns ``(m,)``.
    """
    if q_at_truth.dim() != 2 or q_at_truth.shape[0] < 2:
        raise ValueError(f"q_at_truth must be (B, m) with B >= 2 toys per grid point, got {tuple(q_at_truth.shape)}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    return torch.quantile(q_at_truth.double(), level, dim=0)


def neyman_interval(theta: Tensor, q: Tensor, cut: Tensor) -> tuple[Tensor, Tensor]:
    r"""The confidence set :math:`\{\theta : q(\theta) \le c(\theta)\}` as an interval, for ``q`` ``(T, m)`` or ``(m,)``.

    ``theta`` ``(m,)`` increasing grid, ``cut`` ``(m,)`` the belt :math:`c(\theta)` from
    :func:`neyman_belt` (or a constant :math:`\chi^2_1` quantile for Wilks). Each row gives the
    smallest interval holding every grid point where :math:`q \le c` (a Neyman set may be
    disconnected; an empty one shrinks to the minimum of :math:`q - c`), ends linearly
    interpolated (:eq:`eq-sbi-neyman`). Returns ``(low, high)``, each ``(T,)`` (or 0-d).
    """
    _check_curves(theta, q, "q")
    if cut.shape != theta.shape:
        raise ValueError(f"cut must have the grid's shape {tuple(theta.shape)}, got {tuple(cut.shape)}")
    t, d = theta.double(), (q.double() - cut.double()).reshape(-1, len(theta))  # (T, m)
    m, inside = len(t), d <= 0
    k = d.argmin(1, keepdim=True)  # (T, 1) stands in for an empty set
    lo = torch.where(inside.any(1, keepdim=True), inside.double().argmax(1, keepdim=True), k)
    hi = torch.where(inside.any(1, keepdim=True), m - 1 - inside.flip(1).double().argmax(1, keepdim=True), k)

    def end(i: Tensor, j: Tensor) -> Tensor:  # where d crosses 0 between i (inside) and j, else t[i]
        di, dj = d.gather(1, i), d.gather(1, j.clamp(0, m - 1))
        x = t[i] - di / (dj - di) * (t[j.clamp(0, m - 1)] - t[i])
        return torch.where((j < 0) | (j >= m), t[i], x)[:, 0]

    shape = q.shape[:-1]
    return end(lo, lo - 1).reshape(shape), end(hi, hi + 1).reshape(shape)


def interval_coverage(low: Tensor, high: Tensor, theta_true: Tensor | float) -> tuple[float, float]:
    r"""Empirical coverage :math:`\hat C = \frac1T \sum_k 1[\ell_k \le \theta_k \le h_k]` and its binomial error.

    ``low``, ``high`` ``(T,)``: the intervals of ``T`` toy data sets; ``theta_true`` a scalar or
    ``(T,)``, the parameter each toy was simulated at. Returns ``(coverage, se)`` with
    :math:`\mathrm{se} = \sqrt{\hat C(1 - \hat C)/T}` (:eq:`eq-sbi-coverage`).
    """
    if low.dim() != 1 or low.shape != high.shape or low.numel() == 0:
        raise ValueError(f"low and high must be non-empty vectors of equal length, got shapes "
                         f"{tuple(low.shape)} and {tuple(high.shape)}")
    truth = torch.as_tensor(theta_true, dtype=torch.float64).expand(low.shape)
    covered = ((low.double() <= truth) & (truth <= high.double())).double()
    c = float(covered.mean())
    return c, math.sqrt(c * (1 - c) / len(covered))
