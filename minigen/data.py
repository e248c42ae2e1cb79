r"""Targets used throughout the book, with exact sampling and, where it exists, exact density.

Every target has ``dim`` and ``sample(n, generator=None, dtype=torch.float32, device=None)``;
the same generator state gives the same sample. Samples are drawn in float64 on the CPU (so a CPU
generator gives the same points on every device) and then moved to ``dtype`` and ``device``.
Shapes: samples are ``(n, d)``, also in 1D (``d = 1``); ``log_prob`` and 1D ``cdf`` return
``(n,)`` in the dtype and on the device of their input.

The Gaussian mixture

.. math:: p(x) = \sum_k \pi_k \, \mathcal N(x; \mu_k, \operatorname{diag}(\sigma_k^2))

has a closed-form log density, score :math:`\nabla_x \log p(x)` and (in 1D) CDF, and it stays a
Gaussian mixture under :math:`a X + \sigma Z`, which gives exact scores at every noise level.

:func:`targets` lists a family for experiments and benchmarks: in 1D two mixtures with unequal
weights and widths and a heavy-tailed Student-t; in 2D eight Gaussians, two moons, a
checkerboard, a pinwheel, two spirals and concentric rings. Each has a characteristic scale of
order one (a standard deviation of 0.5 to 1.7 per coordinate) and an exact ``log_prob``; the 1D
ones also have an exact ``cdf``. Spirals are a Gaussian mixture by construction; the moons'
density is a Gauss-Legendre quadrature over the arc, exact to about 1e-13.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "GaussianMixture",
    "StudentT",
    "TwoMoons",
    "Checkerboard",
    "Pinwheel",
    "Rings",
    "mixture_1d",
    "skewed_mixture_1d",
    "four_mode_1d",
    "student_t_1d",
    "eight_gaussians",
    "mixture_2d",
    "two_moons",
    "checkerboard",
    "pinwheel",
    "spirals",
    "rings",
    "torchcfm_8gaussians",
    "torchcfm_moons",
    "targets",
    "Digits",
    "digits",
]


def _check_points(x: Tensor, d: int, name: str = "x") -> Tensor:
    """Accept ``(n, d)`` (or ``(n,)`` when ``d == 1``) and return ``(n, d)``."""
    if d == 1 and x.dim() == 1:
        x = x[:, None]
    if x.dim() != 2 or x.shape[1] != d:
        raise ValueError(f"{name} must have shape (n, {d}), got {tuple(x.shape)}")
    return x


def _check_simplex(weights: Tensor, name: str = "weights") -> Tensor:
    """Check that ``weights`` ``(K,)`` are non-negative and sum to 1; renormalise the round-off."""
    if weights.dim() != 1 or (weights < 0).any() or abs(float(weights.sum()) - 1) > 1e-6:
        raise ValueError(f"{name} must lie on the simplex (non-negative, summing to 1), "
                         f"got {weights.tolist()}")
    return weights / weights.sum()  # float32 round-off only (< 1e-6)


def _check_positive(value: Tensor | float, name: str) -> None:
    if not bool((torch.as_tensor(value) > 0).all()):
        raise ValueError(f"{name} must be positive, got {torch.as_tensor(value).tolist()}")


def _rotate(v: Tensor, angle: Tensor) -> Tensor:
    """Rotate points ``v`` ``(..., 2)`` by ``angle`` (broadcast against ``v[..., 0]``)."""
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.stack([c * v[..., 0] - s * v[..., 1], s * v[..., 0] + c * v[..., 1]], -1)


def _gauss_legendre(q: int) -> tuple[Tensor, Tensor]:
    """Nodes and weights ``(q,)`` of the ``q``-point Gauss-Legendre rule on [-1, 1] (Golub-Welsch)."""
    k = torch.arange(1, q, dtype=torch.float64)
    beta = k / torch.sqrt(4 * k**2 - 1)
    nodes, vecs = torch.linalg.eigh(torch.diag(beta, 1) + torch.diag(beta, -1))
    return nodes, 2 * vecs[0] ** 2


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
        self.weights = _check_simplex(self.weights)
        _check_positive(self.stds, "stds")

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        """Exact sample of shape ``(n, d)``."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)  # (n,)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)  # (n, d)
        return (self.means[k] + self.stds[k] * z).to(device=device, dtype=dtype)

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


# ------------------------------------------------------------------------------------------------
# 1D targets
# ------------------------------------------------------------------------------------------------

@dataclass
class StudentT:
    r"""Student-t law with an integer number of degrees of freedom :math:`\nu` (heavy tails).

    .. math:: p(x) = \frac{\Gamma(\frac{\nu+1}2)}{\Gamma(\frac\nu2)\sqrt{\nu\pi}\,s}
              \Bigl(1 + \frac{t^2}{\nu}\Bigr)^{-\frac{\nu+1}2}, \qquad t = \frac{x - m}{s}.

    Exact sampling as :math:`t = Z_0 / \sqrt{\sum_{i=1}^{\nu} Z_i^2 / \nu}` with independent
    standard normals :math:`Z_i`; the CDF is the finite trigonometric series of Abramowitz and
    Stegun (26.7.3-4) in :math:`\theta = \arctan(t / \sqrt\nu)`. Moments of order :math:`\ge \nu`
    are infinite (with :math:`\nu = 3` the variance :math:`3 s^2` exists, the kurtosis does not).

    Args:
        df: degrees of freedom :math:`\nu`, a positive integer.
        loc: location :math:`m`.
        scale: scale :math:`s > 0`.
    """

    df: int = 3
    loc: float = 0.0
    scale: float = 1.0
    dim: int = 1

    def __post_init__(self) -> None:
        if int(self.df) != self.df or self.df < 1:
            raise ValueError(f"df must be a positive integer, got {self.df}")
        _check_positive(self.scale, "scale")

    def sample(self, n: int, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        """Exact sample of shape ``(n, 1)``."""
        z = torch.randn(n, int(self.df) + 1, generator=generator, dtype=torch.float64)
        t = z[:, :1] / torch.sqrt((z[:, 1:] ** 2).mean(1, keepdim=True))  # (n, 1)
        return (self.loc + self.scale * t).to(device=device, dtype=dtype)

    def log_prob(self, x: Tensor) -> Tensor:
        r""":math:`\log p(x)` for ``x`` of shape ``(n,)`` or ``(n, 1)``; returns ``(n,)``."""
        t = (_check_points(x, 1)[:, 0] - self.loc) / self.scale
        nu = float(self.df)
        const = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi)
        return const - math.log(self.scale) - (nu + 1) / 2 * torch.log1p(t**2 / nu)

    def cdf(self, x: Tensor) -> Tensor:
        r"""CDF :math:`F(x) = (1 + A)/2`, with :math:`A` the A&S series in :math:`\theta`; ``(n,)``."""
        t = (_check_points(x, 1)[:, 0] - self.loc) / self.scale
        nu = int(self.df)
        theta = torch.atan(t / math.sqrt(nu))
        c, s = torch.cos(theta), torch.sin(theta)
        series, coef = torch.zeros_like(t), 1.0
        if nu % 2:  # A = (2/pi) (theta + sin(theta) sum_k a_k cos^(2k-1)(theta))
            for k in range(1, (nu - 1) // 2 + 1):
                series, coef = series + coef * c ** (2 * k - 1), coef * (2 * k) / (2 * k + 1)
            a = 2 / math.pi * (theta + s * series)
        else:  # A = sin(theta) sum_k b_k cos^(2k)(theta)
            for k in range(nu // 2):
                series, coef = series + coef * c ** (2 * k), coef * (2 * k + 1) / (2 * k + 2)
            a = s * series
        return 0.5 * (1 + a)


def mixture_1d() -> GaussianMixture:
    """The 1D target 0.5 N(-1, 0.5^2) + 0.5 N(+1, 0.5^2) of the early chapters."""
    return GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-1.0], [1.0]]),
                           torch.tensor([0.5, 0.5]))


def skewed_mixture_1d() -> GaussianMixture:
    """Three modes skewed to the right: a heavy narrow mode, then lighter and wider ones.

    Weights 0.5, 0.35, 0.15 at -1, 0.2, 1.6 with widths 0.15, 0.35, 0.5 (ratio 3.3); skewness 0.90.
    """
    return GaussianMixture(torch.tensor([0.5, 0.35, 0.15]),
                           torch.tensor([[-1.0], [0.2], [1.6]]), torch.tensor([0.15, 0.35, 0.5]))


def four_mode_1d() -> GaussianMixture:
    """Four modes of weights 0.1, 0.4, 0.2, 0.3 and widths 0.1, 0.4, 0.15, 0.3 (ratio 4)."""
    return GaussianMixture(torch.tensor([0.1, 0.4, 0.2, 0.3]),
                           torch.tensor([[-2.0], [-0.7], [0.6], [1.8]]),
                           torch.tensor([0.1, 0.4, 0.15, 0.3]))


def student_t_1d(df: int = 3) -> StudentT:
    """A centred Student-t with ``df`` degrees of freedom and scale 1 (heavy tails)."""
    return StudentT(df=df)


# ------------------------------------------------------------------------------------------------
# 2D shapes: moons, checkerboard, pinwheel, spirals, rings (the toy data of FFJORD and its heirs)
# ------------------------------------------------------------------------------------------------

@dataclass
class TwoMoons:
    r"""Two interleaving half circles with Gaussian noise (the classic two-moons data set).

    Samples are ``scale * (moon + noise * Z + jitter * U (1, 1)) + shift`` with ``Z`` standard
    normal and ``U`` uniform on [0, 1) (one ``U`` per point, shared by both coordinates, the
    convention of torchdyn's ``generate_moons``). The angle along each half circle is uniform.

    With ``jitter = 0`` and ``noise > 0`` the density

    .. math:: p(x) = \frac12 \sum_{\text{moon}} \frac1\pi \int_0^\pi
              \mathcal N\bigl(x; c(\varphi), s^2 I\bigr)\, d\varphi

    is a Gauss-Legendre quadrature in :math:`\varphi` (see :meth:`as_mixture`), exact to about
    1e-13 relative to its maximum; with jitter there is no density here.
    """

    noise: float = 0.1
    scale: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)
    dim: int = 2
    jitter: float = 0.0

    def sample(self, n: int, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        """Exact sample of shape ``(n, 2)``: each point falls on either moon with probability 1/2."""
        upper = torch.rand(n, generator=generator, dtype=torch.float64) < 0.5  # (n,)
        angle = math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
        x = torch.where(upper, torch.cos(angle), 1 - torch.cos(angle))
        y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle))
        pts = torch.stack([x, y], 1) + self.noise * torch.randn(n, 2, generator=generator,
                                                                dtype=torch.float64)
        if self.jitter:
            pts = pts + self.jitter * torch.rand(n, 1, generator=generator, dtype=torch.float64)
        pts = self.scale * pts + torch.tensor(self.shift, dtype=torch.float64)
        return pts.to(device=device, dtype=dtype)

    def as_mixture(self, n_nodes: int | None = None) -> GaussianMixture:
        r"""The density as a mixture over ``n_nodes`` Gauss-Legendre angles per moon.

        :math:`\int_0^\pi f \,d\varphi \approx \frac\pi2 \sum_q w_q f(\varphi_q)` turns
        :math:`p` into :math:`\sum_{\text{moon}, q} \frac{w_q}{4} \mathcal N(c(\varphi_q), s^2 I)`.
        The default ``ceil(8 / noise)`` nodes gave a relative error below 1e-13 for noise 0.02-0.2.
        """
        if self.jitter or self.noise <= 0:
            raise NotImplementedError(
                f"no density for moons with jitter = {self.jitter} and noise = {self.noise}: "
                "the quadrature needs jitter = 0 and noise > 0")
        t, w = _gauss_legendre(n_nodes or max(16, math.ceil(8 / self.noise)))  # (q,), (q,)
        phi = math.pi / 2 * (t + 1)
        upper = torch.stack([torch.cos(phi), torch.sin(phi)], 1)  # (q, 2)
        lower = torch.stack([1 - torch.cos(phi), 0.5 - torch.sin(phi)], 1)
        means = self.scale * torch.cat([upper, lower]) + torch.tensor(self.shift, dtype=torch.float64)
        return GaussianMixture(torch.cat([w, w]) / 4, means,
                               torch.full((2 * len(t),), self.scale * self.noise))

    def log_prob(self, x: Tensor) -> Tensor:
        r""":math:`\log p(x)` by quadrature (:meth:`as_mixture`) for ``x`` ``(n, 2)``; ``(n,)``."""
        return self.as_mixture().log_prob(x)


@dataclass
class Checkerboard:
    r"""Uniform law on the dark squares of a ``n_cells`` x ``n_cells`` board centred at 0.

    Cell :math:`(i, j)` (counted from the lower left corner) is dark when :math:`i + j` is even,
    as in FFJORD's checkerboard (``n_cells = 4``, ``side = 1``). The density is exact:

    .. math:: p(x) = \frac{2}{n^2 a^2} \mathbf 1[x \text{ in a dark square}],

    so ``log_prob`` is :math:`-\infty` off the dark squares.

    Args:
        n_cells: an even number of cells :math:`n` per side.
        side: the side :math:`a` of a cell.
    """

    n_cells: int = 4
    side: float = 1.0
    dim: int = 2

    def __post_init__(self) -> None:
        if int(self.n_cells) != self.n_cells or self.n_cells < 2 or self.n_cells % 2:
            raise ValueError(f"n_cells must be an even integer >= 2, got {self.n_cells}")
        _check_positive(self.side, "side")

    def sample(self, n: int, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        """Exact sample of shape ``(n, 2)``: a uniform column, a dark cell in it, a uniform point."""
        k = self.n_cells
        i = torch.randint(k, (n,), generator=generator)  # column
        j = 2 * torch.randint(k // 2, (n,), generator=generator) + i % 2  # dark row in column i
        u = torch.rand(n, 2, generator=generator, dtype=torch.float64)  # (n, 2)
        pts = (torch.stack([i, j], 1) + u - k / 2) * self.side
        return pts.to(device=device, dtype=dtype)

    def log_prob(self, x: Tensor) -> Tensor:
        r""":math:`\log p(x)` for ``x`` ``(n, 2)``: :math:`\log(2 / (n^2 a^2))` or :math:`-\infty`."""
        k = self.n_cells
        ij = torch.floor(_check_points(x, 2) / self.side + k / 2)  # (n, 2) cell indices
        inside = ((ij >= 0) & (ij < k)).all(1) & (ij.sum(1) % 2 == 0)
        logp = math.log(2 / (k * self.side) ** 2)
        return torch.full_like(x[:, 0], -math.inf).masked_fill(inside, logp)  # (n,)


@dataclass
class Pinwheel:
    r"""A pinwheel: ``n_arms`` elongated Gaussians pushed through a swirl (after FFJORD's pinwheel).

    The base point :math:`y = R(\theta_k)(e_1 + D z)`, with :math:`\theta_k = 2\pi k / K`,
    :math:`D = \operatorname{diag}(\sigma_r, \sigma_t)` and :math:`z \sim \mathcal N(0, I)`, is
    mapped by the swirl :math:`T(y) = s\, R(-\alpha(\lVert y \rVert))\, y` with
    :math:`\alpha(r) = \rho\, e^r`. FFJORD twists by :math:`\rho e^{y_1}` (in the arm's frame);
    twisting by the radius instead makes :math:`T` invertible, :math:`T^{-1}(x) =
    R(\alpha(\lVert x \rVert / s))\, x / s`, with :math:`|\det \nabla T| = s^2` (a rotation that
    depends only on the radius preserves area), so the density is exact:

    .. math:: \log p(x) = \log \frac1K \sum_k \mathcal N\bigl(R(-\theta_k) T^{-1}(x); e_1, D^2\bigr)
              - 2 \log s.

    Args:
        n_arms: number of arms :math:`K`.
        radial_std: radial standard deviation :math:`\sigma_r > 0` (along the arm).
        tangential_std: tangential standard deviation :math:`\sigma_t > 0` (across the arm).
        rate: twist rate :math:`\rho`.
        scale: overall scale :math:`s > 0`.
    """

    n_arms: int = 5
    radial_std: float = 0.3
    tangential_std: float = 0.1
    rate: float = 0.25
    scale: float = 2.0
    dim: int = 2

    def __post_init__(self) -> None:
        if int(self.n_arms) != self.n_arms or self.n_arms < 1:
            raise ValueError(f"n_arms must be a positive integer, got {self.n_arms}")
        for name in ("radial_std", "tangential_std", "scale"):
            _check_positive(getattr(self, name), name)

    def _angles(self) -> Tensor:
        return torch.arange(self.n_arms, dtype=torch.float64) * (2 * math.pi / self.n_arms)

    def twist(self, y: Tensor) -> Tensor:
        r"""The swirl :math:`T(y) = s R(-\rho e^{\lVert y \rVert}) y` on ``y`` ``(n, 2)``."""
        return self.scale * _rotate(y, -self.rate * torch.exp(y.norm(dim=-1)))

    def untwist(self, x: Tensor) -> Tensor:
        r"""The inverse swirl :math:`T^{-1}(x) = R(\rho e^{\lVert x \rVert / s}) x / s`; ``(n, 2)``."""
        y = x / self.scale
        return _rotate(y, self.rate * torch.exp(y.norm(dim=-1)))

    def sample(self, n: int, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        """Exact sample of shape ``(n, 2)``: a uniform arm, a Gaussian point on it, the swirl."""
        k = torch.randint(self.n_arms, (n,), generator=generator)  # (n,)
        z = torch.randn(n, 2, generator=generator, dtype=torch.float64)  # (n, 2)
        f = torch.stack([1 + self.radial_std * z[:, 0], self.tangential_std * z[:, 1]], 1)
        return self.twist(_rotate(f, self._angles()[k])).to(device=device, dtype=dtype)

    def log_prob(self, x: Tensor) -> Tensor:
        r""":math:`\log p(x)` by the change of variables above for ``x`` ``(n, 2)``; ``(n,)``."""
        y = self.untwist(_check_points(x, 2))  # (n, 2)
        u = _rotate(y[:, None, :], -self._angles().to(x))  # (n, K, 2) in each arm's frame
        sr, st = self.radial_std, self.tangential_std
        logn = (-0.5 * ((u[..., 0] - 1) / sr) ** 2 - 0.5 * (u[..., 1] / st) ** 2
                - math.log(2 * math.pi * sr * st))  # (n, K)
        return torch.logsumexp(logn, 1) - math.log(self.n_arms) - 2 * math.log(self.scale)


@dataclass
class Rings:
    r"""Concentric rings: a point uniform on a circle of radius :math:`R_k`, plus Gaussian noise.

    Its radius follows a Rice law, so the density is exact,

    .. math:: p(x) = \sum_k \frac{\pi_k}{2\pi\sigma_k^2}
              \exp\Bigl(-\frac{r^2 + R_k^2}{2\sigma_k^2}\Bigr) I_0\Bigl(\frac{r R_k}{\sigma_k^2}\Bigr),
              \qquad r = \lVert x \rVert,

    evaluated stably with the scaled Bessel function :math:`e^{-z} I_0(z)`.

    Args:
        weights: ``(K,)`` ring probabilities on the simplex.
        radii: ``(K,)`` radii :math:`R_k > 0`.
        stds: ``(K,)`` noise standard deviations :math:`\sigma_k > 0`.
    """

    weights: Tensor
    radii: Tensor
    stds: Tensor
    dim: int = 2

    def __post_init__(self) -> None:
        self.weights = torch.as_tensor(self.weights, dtype=torch.float64)
        self.radii = torch.as_tensor(self.radii, dtype=torch.float64)
        self.stds = torch.as_tensor(self.stds, dtype=torch.float64)
        if not self.weights.shape == self.radii.shape == self.stds.shape == (len(self.weights),):
            raise ValueError(f"shapes disagree: weights {tuple(self.weights.shape)}, radii "
                             f"{tuple(self.radii.shape)}, stds {tuple(self.stds.shape)}; expected (K,)")
        self.weights = _check_simplex(self.weights)
        _check_positive(self.radii, "radii")
        _check_positive(self.stds, "stds")

    def sample(self, n: int, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        """Exact sample of shape ``(n, 2)``."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)  # (n,)
        angle = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
        z = torch.randn(n, 2, generator=generator, dtype=torch.float64)  # (n, 2)
        circle = torch.stack([torch.cos(angle), torch.sin(angle)], 1)
        return (self.radii[k, None] * circle + self.stds[k, None] * z).to(device=device, dtype=dtype)

    def log_prob(self, x: Tensor) -> Tensor:
        r""":math:`\log p(x)` (Rice mixture above) for ``x`` ``(n, 2)``; returns ``(n,)``."""
        r = _check_points(x, 2).norm(dim=1, keepdim=True)  # (n, 1)
        w, big_r, sd = self.weights.to(x), self.radii.to(x), self.stds.to(x)  # (K,)
        log_ring = (-(r - big_r) ** 2 / (2 * sd**2) + torch.log(torch.special.i0e(r * big_r / sd**2))
                    - torch.log(2 * math.pi * sd**2))  # (n, K)
        return torch.logsumexp(log_ring + w.log(), 1)


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


def checkerboard() -> Checkerboard:
    """FFJORD's checkerboard: 8 dark unit squares of a 4 x 4 board on [-2, 2]^2 (density 1/8)."""
    return Checkerboard(n_cells=4, side=1.0)


def pinwheel() -> Pinwheel:
    """FFJORD's pinwheel parameters: 5 arms, stds 0.3 and 0.1, rate 0.25, scale 2."""
    return Pinwheel()


def spirals(n_arms: int = 2, turns: float = 1.5, radius: float = 3.0,
            std: float = 0.1) -> GaussianMixture:
    r"""Archimedean spiral arms as an equal-weight Gaussian mixture (exact density and score).

    Arm :math:`a = 0, \dots, A-1` follows :math:`c_a(\varphi) = \frac{R \varphi}{\varphi_1}\,
    R(2\pi a / A) (-\cos\varphi, \sin\varphi)` for :math:`0 \le \varphi \le \varphi_1 = 2\pi`
    ``turns``, as in FFJORD's two spirals, with :math:`R` the ``radius`` of the outer end. The means
    sit one ``std`` apart in arc length, so the mass is uniform along the arms and the ripple
    between neighbouring means is about :math:`2 e^{-2\pi^2} \approx 5 \cdot 10^{-9}`.
    """
    _check_positive(torch.tensor([turns, radius, std]), "turns, radius and std")
    phi1 = 2 * math.pi * turns
    phi = torch.linspace(0, phi1, 20_001, dtype=torch.float64)
    speed = radius / phi1 * torch.sqrt(1 + phi**2)  # |c'(phi)|
    arc = torch.cat([phi.new_zeros(1), torch.cumulative_trapezoid(speed, phi)])  # (20001,)
    s = torch.linspace(0, float(arc[-1]), math.ceil(float(arc[-1]) / std) + 1, dtype=torch.float64)
    i = torch.searchsorted(arc, s).clamp(1, len(arc) - 1)
    phi_s = phi[i - 1] + (s - arc[i - 1]) / (arc[i] - arc[i - 1]) * (phi[i] - phi[i - 1])  # (m,)
    arm = radius * phi_s[:, None] / phi1 * torch.stack([-torch.cos(phi_s), torch.sin(phi_s)], 1)
    means = torch.cat([_rotate(arm, torch.tensor(2 * math.pi * a / n_arms, dtype=torch.float64))
                       for a in range(n_arms)])  # (A m, 2)
    k = len(means)
    return GaussianMixture(torch.full((k,), 1 / k), means, torch.full((k,), std))


def rings(radii: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0), std: float = 0.08) -> Rings:
    """Equal-weight concentric rings of ``radii`` with noise ``std`` (exact density)."""
    k = len(radii)
    return Rings(torch.full((k,), 1 / k), torch.tensor(radii), torch.full((k,), std))


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


def targets(dim: int | None = None,
            ) -> dict[str, GaussianMixture | StudentT | TwoMoons | Checkerboard | Pinwheel | Rings]:
    """The family of targets for experiments and benchmarks, by name, fresh instances each call.

    All have exact sampling and an exact ``log_prob`` (the moons' by quadrature to about 1e-13);
    the 1D ones have an exact ``cdf``. Each has a characteristic scale of order one: a median
    absolute deviation of 0.45 to 1.4 per coordinate (standard deviation 0.5 to 1.7).
    ``dim`` (1 or 2) keeps the targets of that dimension.
    """
    family = {
        "skewed_mixture_1d": skewed_mixture_1d(), "four_mode_1d": four_mode_1d(),
        "student_t_1d": student_t_1d(), "eight_gaussians": eight_gaussians(),
        "two_moons": two_moons(), "checkerboard": checkerboard(), "pinwheel": pinwheel(),
        "spirals": spirals(), "rings": rings(),
    }
    if dim is None:
        return family
    if dim not in (1, 2):
        raise ValueError(f"dim must be 1, 2 or None; the targets have dimension 1 or 2, got {dim}")
    return {name: t for name, t in family.items() if t.dim == dim}


class Digits(NamedTuple):
    """The 8x8 digits split once: pixel rows ``(N, 64)`` in [-1, 1] and labels ``(N,)`` (int64)."""

    x_train: Tensor
    y_train: Tensor
    x_held: Tensor
    y_held: Tensor

    def rows(self) -> Tensor:
        """Training rows ``(N, 65)``: the 64 pixels then the label as a float column, the layout
        that :func:`minigen.train.fit` samples minibatches from for a labelled model."""
        return torch.cat([self.x_train, self.y_train[:, None].to(self.x_train)], dim=1)


def digits(n_held: int = 360, seed: int = 0, dtype: torch.dtype = torch.float32) -> Digits:
    r"""The 1,797 handwritten digits of scikit-learn (8x8 pixels, ten classes; chapter 12).

    Pixels :math:`v \in \{0, \dots, 16\}` are scaled to :math:`x = v / 8 - 1 \in [-1, 1]`, rows
    read the image line by line. A permutation drawn with ``seed`` puts ``n_held`` images aside
    (held out, never trained on) and keeps the rest for training: the same split on every call.
    The data ship with scikit-learn (no download).
    """
    from sklearn.datasets import load_digits  # imported on demand: minigen needs it only here

    if not 0 < n_held < 1_797:
        raise ValueError(f"n_held must lie in 1 .. 1796 (there are 1,797 images), got {n_held}")
    bunch = load_digits()
    x = torch.as_tensor(bunch.data, dtype=torch.float64) / 8 - 1  # (1797, 64)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)  # (1797,)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    held, train = perm[:n_held], perm[n_held:]
    return Digits(x[train].to(dtype), y[train], x[held].to(dtype), y[held])
