r"""Baselines to compare a generative model with: a Gaussian that knows only two moments.

:func:`moment_matched` fits it to a target's mean and covariance; chapter 11 and the page on
measuring distributions score every model against it. The tools that measure models side by
side live with their kind: sampling cost (:func:`minigen.train.timed`), network evaluations per
sample and the paired log-likelihood gap (:func:`minigen.metrics.evaluations_per_sample`,
:func:`minigen.metrics.loglik_gap`, book :eq:`eq-cmp-nfe` and :eq:`eq-cmp-gap`), and the HTML
table (:func:`minigen.plot.html_table`).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .networks import _random
from .train import Model

__all__ = ["Gaussian", "moment_matched"]


class Gaussian(Model):
    r"""The Gaussian :math:`\N(m, \Sigma)` as a :class:`minigen.train.Model` with no network: the
    baseline that knows two moments and nothing else.

    ``mean`` ``(d,)`` and ``cov`` ``(d, d)`` (symmetric positive definite) are kept in float64;
    ``sample(n, generator)`` returns :math:`m + L z` ``(n, d)`` with :math:`\Sigma = L L^\top`,
    ``log_prob(x)`` ``(B, d) -> (B,)`` the exact log density. Nothing is trained.
    """

    def __init__(self, mean: Tensor, cov: Tensor):
        super().__init__()
        mean, cov = torch.as_tensor(mean, dtype=torch.float64), torch.as_tensor(cov, dtype=torch.float64)
        if mean.dim() != 1 or cov.shape != (len(mean), len(mean)):
            raise ValueError(f"mean must be (d,) and cov (d, d), got {tuple(mean.shape)} and "
                             f"{tuple(cov.shape)}")
        chol, info = torch.linalg.cholesky_ex(cov)
        if info != 0 or not torch.allclose(cov, cov.T):
            raise ValueError("cov must be symmetric positive definite")
        self.dim, self.recipe = len(mean), {}
        self.register_buffer("mean", mean)
        self.register_buffer("chol", chol)  # (d, d), lower triangular

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.mean + _random(torch.randn, (n, self.dim), self.mean, generator) @ self.chol.T  # (n, d)

    def log_prob(self, x: Tensor) -> Tensor:
        x = self._check_batch(x, "x").to(self.mean)
        return torch.distributions.MultivariateNormal(self.mean, scale_tril=self.chol).log_prob(x)


def moment_matched(mixture: Any) -> Gaussian:
    r"""The Gaussian with a mixture's exact mean and covariance (book :eq:`eq-cmp-moments`),

    .. math:: m = \sum_k \pi_k \mu_k, \qquad \Sigma = \sum_k \pi_k \big[\operatorname{diag}
              \sigma_k^2 + (\mu_k - m)(\mu_k - m)^\top\big]

    (the law of total covariance). ``mixture`` has ``weights`` ``(K,)``, ``means`` ``(K, d)`` and
    diagonal ``stds`` ``(K, d)``, as a :class:`minigen.data.GaussianMixture`.
    """
    w, mu = mixture.weights.double(), mixture.means.double()  # (K,), (K, d)
    var = mixture.stds.double().expand_as(mu) ** 2  # (K, d)
    mean = w @ mu  # (d,)
    centred = mu - mean  # (K, d)
    return Gaussian(mean, torch.einsum("k,ki,kj->ij", w, centred, centred) + torch.diag(w @ var))


