r"""Targets used throughout the book, with exact sampling and, where it exists, exact density.

Every sampler takes ``n`` and an optional ``torch.Generator``; the same generator state gives the
same sample. Shapes: samples are ``(n, d)``, also in 1D (``d = 1``); densities are ``(n,)``.

The Gaussian mixture

.. math:: p(x) = \sum_k \pi_k \, \mathcal N(x; \mu_k, \operatorname{diag}(\sigma_k^2))

has a closed-form log density, score :math:`\nabla_x \log p(x)` and (in 1D) CDF, and it stays a
Gaussian mixture under :math:`a X + \sigma Z`, which gives exact scores at every noise level.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "GaussianMixture",
    "TwoMoons",
    "mixture_1d",
    "asymmetric_1d",
    "eight_gaussians",
    "mixture_2d",
    "two_moons",
    "torchcfm_8gaussians",
    "torchcfm_moons",
]


def _check_points(x: Tensor, d: int, name: str = "x") -> Tensor:
    """Accept ``(n, d)`` (or ``(n,)`` when ``d == 1``) and return ``(n, d)``."""
    if d == 1 and x.dim() == 1:
        x = x[:, None]
    if x.dim() != 2 or x.shape[1] != d:
        raise ValueError(f"{name} must have shape (n, {d}), got {tuple(x.shape)}")
    return x


@dataclass
class GaussianMixture:
    r"""Mixture :math:`\sum_k \pi_k \mathcal N(\mu_k, \operatorname{diag}\sigma_k^2)` in :math:`d` dims.

    Args:
        weights: ``(K,)`` non-negative, summing to 1.
        means: ``(K, d)``.
        stds: ``(K,)`` isotropic or ``(K, d)`` diagonal standard deviations, all positive.
    """

    weights: Tensor
    means: Tensor
    stds: Tensor

    def __post_init__(self) -> None:
        self.weights = torch.as_tensor(self.weights, dtype=torch.float64)
        self.means = torch.as_tensor(self.means, dtype=torch.float64)
        self.stds = torch.as_tensor(self.stds, dtype=torch.float64)
        if self.means.dim() == 1:
            self.means = self.means[:, None]
        k, d = self.means.shape
        if self.stds.dim() == 1:
            self.stds = self.stds[:, None].expand(k, d).clone()
        if self.weights.shape != (k,) or self.stds.shape != (k, d):
            raise ValueError(
                f"shapes disagree: weights {tuple(self.weights.shape)}, means {(k, d)}, "
                f"stds {tuple(self.stds.shape)}; expected (K,), (K, d), (K,) or (K, d)"
            )
        if (self.weights < 0).any() or abs(float(self.weights.sum()) - 1) > 1e-6:
            raise ValueError(f"weights must lie on the simplex, got {self.weights.tolist()}")
        self.weights = self.weights / self.weights.sum()  # float32 round-off only (< 1e-6)
        if (self.stds <= 0).any():
            raise ValueError("stds must be positive")

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32) -> Tensor:
        """Exact sample of shape ``(n, d)``."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)  # (n,)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)  # (n, d)
        return (self.means[k] + self.stds[k] * z).to(dtype)

    def _component_log_prob(self, x: Tensor) -> Tensor:
        x = _check_points(x, self.dim)
        mu, sd = self.means.to(x), self.stds.to(x)
        z = (x[:, None, :] - mu) / sd  # (n, K, d)
        return -0.5 * (z**2).sum(-1) - sd.log().sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)

    def log_prob(self, x: Tensor) -> Tensor:
        r""":math:`\log p(x)` for ``x`` of shape ``(n, d)``; returns ``(n,)``."""
        return torch.logsumexp(self._component_log_prob(x) + self.weights.to(x).log(), dim=1)

    def score(self, x: Tensor) -> Tensor:
        r""":math:`\nabla_x \log p(x) = \sum_k r_k(x) (\mu_k - x) / \sigma_k^2`; ``(n, d)``."""
        x = _check_points(x, self.dim)
        resp = torch.softmax(self._component_log_prob(x) + self.weights.to(x).log(), dim=1)
        comp = (self.means.to(x) - x[:, None, :]) / self.stds.to(x) ** 2  # (n, K, d)
        return (resp[:, :, None] * comp).sum(1)

    def cdf(self, x: Tensor) -> Tensor:
        """CDF of a 1D mixture at ``x`` of shape ``(n,)`` or ``(n, 1)``; returns ``(n,)``."""
        if self.dim != 1:
            raise ValueError(f"cdf is defined for 1D mixtures, this one has d = {self.dim}")
        x = _check_points(x, 1)
        z = (x - self.means[:, 0].to(x)) / self.stds[:, 0].to(x)  # (n, K)
        return (0.5 * torch.special.erfc(-z / math.sqrt(2)) * self.weights.to(x)).sum(1)

    def entropy(self, n: int = 200_000, generator: torch.Generator | None = None) -> float:
        r"""Differential entropy :math:`H(p) = -\mathbb E_p \log p`; exact in 1D (quadrature), else Monte Carlo."""
        if self.dim == 1:
            lo = float((self.means - 12 * self.stds).min())
            hi = float((self.means + 12 * self.stds).max())
            t = torch.linspace(lo, hi, 400_001, dtype=torch.float64)
            logp = self.log_prob(t)
            return float(-torch.trapezoid(logp.exp() * logp, t))
        x = self.sample(n, generator, dtype=torch.float64)
        return float(-self.log_prob(x).mean())

    def noised(self, a: float, sigma: float) -> "GaussianMixture":
        r"""Law of :math:`aX + \sigma Z` with :math:`X \sim p`, :math:`Z \sim \mathcal N(0, I)`."""
        stds = torch.sqrt(a**2 * self.stds**2 + sigma**2)
        return GaussianMixture(self.weights, a * self.means, stds)


@dataclass
class TwoMoons:
    """Two interleaving half circles with Gaussian noise (the classic two-moons data set).

    Samples are ``scale * (moon + noise * Z + jitter * U (1, 1)) + shift`` with ``Z`` standard
    normal and ``U`` uniform on [0, 1) (one ``U`` per point, shared by both coordinates, the
    convention of torchdyn's ``generate_moons``); there is no closed-form density.
    """

    noise: float = 0.1
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)
    dim: int = 2
    jitter: float = 0.0

    def sample(self, n: int, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32) -> Tensor:
        """Exact sample of shape ``(n, 2)``: each point falls on either moon with probability 1/2."""
        upper = torch.rand(n, generator=generator, dtype=torch.float64) < 0.5  # (n,)
        angle = math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
        x = torch.where(upper, torch.cos(angle), 1 - torch.cos(angle))
        y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle))
        pts = torch.stack([x, y], 1) + self.noise * torch.randn(n, 2, generator=generator,
                                                                dtype=torch.float64)
        if self.jitter:
            pts = pts + self.jitter * torch.rand(n, 1, generator=generator, dtype=torch.float64)
        return (self.scale * pts + torch.tensor(self.shift, dtype=torch.float64)).to(dtype)


def mixture_1d() -> GaussianMixture:
    """The 1D target 0.5 N(-1, 0.5^2) + 0.5 N(+1, 0.5^2) (the peer project's target)."""
    return GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-1.0], [1.0]]),
                           torch.tensor([0.5, 0.5]))


def asymmetric_1d() -> GaussianMixture:
    """An asymmetric 1D target: a narrow left mode and a wide, heavier right mode."""
    return GaussianMixture(torch.tensor([0.3, 0.5, 0.2]), torch.tensor([[-2.0], [0.5], [2.0]]),
                           torch.tensor([0.25, 0.6, 0.4]))


def eight_gaussians(radius: float = 2.0, std: float = 0.2) -> GaussianMixture:
    """Eight equal-weight Gaussians on a circle of ``radius`` (exact density and score)."""
    angle = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = radius * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    return GaussianMixture(torch.full((8,), 1 / 8), means, torch.full((8,), std))


def mixture_2d() -> GaussianMixture:
    """A 2D mixture of three anisotropic Gaussians with unequal weights (exact density and score)."""
    return GaussianMixture(torch.tensor([0.5, 0.3, 0.2]),
                           torch.tensor([[-1.0, -0.5], [1.0, 0.5], [0.0, 1.5]]),
                           torch.tensor([[0.4, 0.25], [0.3, 0.5], [0.25, 0.25]]))


def two_moons(noise: float = 0.1) -> TwoMoons:
    """Two moons centred near the origin (``scale=1``, shifted by (-0.5, -0.25))."""
    return TwoMoons(noise=noise, shift=(-0.5, -0.25))


# Chapter 7 (flow matching): the targets of torchcfm's 8-Gaussians -> moons benchmark.
def torchcfm_8gaussians() -> GaussianMixture:
    """torchcfm's ``sample_8gaussians``: radius 5 and per-coordinate variance ``sqrt(0.1)``.

    torchcfm passes ``sqrt(var) * I`` with ``var = 0.1`` as the *covariance* matrix, so the
    standard deviation is ``0.1 ** 0.25 = 0.562``, not ``sqrt(0.1) = 0.316``.
    """
    return eight_gaussians(radius=5.0, std=0.1**0.25)


def torchcfm_moons() -> TwoMoons:
    """torchcfm's ``sample_moons``: torchdyn moons (noise 0.2, uniform and diagonal) times 3, minus 1."""
    return TwoMoons(noise=0.0, scale=3.0, shift=(-1.0, -1.0), jitter=0.2)
