r"""Kernels, the kernel scalar product of sampled measures, MMD and the kernel log-likelihood.

For measures :math:`\mu = \sum_i \mu_i \delta_{x_i}` and :math:`\nu = \sum_j \nu_j \delta_{y_j}`
the kernel scalar product is :math:`\langle \mu, \nu \rangle_k = \sum_{ij} k(x_i, y_j)\mu_i\nu_j`
(book :eq:`eq-mmd-product`) and, by bilinearity (:eq:`eq-mmd-mmd2`),

.. math:: \mathrm{MMD}^2(\mu, \nu) = \langle\mu,\mu\rangle_k - 2\langle\mu,\nu\rangle_k
          + \langle\nu,\nu\rangle_k = \|\mu - \nu\|_k^2 .

The unbiased estimator drops the diagonal terms :math:`k(x_i, x_i)` and :math:`k(y_j, y_j)`.
Kernels take ``(n, d), (m, d)`` (or ``(n,), (m,)`` in 1D) and return the ``(n, m)`` Gram matrix.

Inputs are checked: samples are non-empty, of the same dimension ``d``, and (in :func:`mmd2`)
finite; bandwidths are positive. Tensors that combine (``x``, ``y`` and the weights ``mu``,
``nu``) must share a dtype, else ``ValueError`` naming both: nothing is converted silently.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .networks import _count, _finite, _random, _same_dtype, mlp
from .train import Model

__all__ = [
    "gaussian_kernel",
    "laplace_kernel",
    "energy_kernel",
    "imq_kernel",
    "gaussian_blur",
    "kernel_product",
    "mmd2",
    "kernel_field",
    "kernel_nll",
    "generator_loss",
    "CurveMixture",
    "MMDGenerator",
]

Kernel = Callable[[Tensor, Tensor], Tensor]


def _as_points(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor (n, d) or (n,), got {type(x).__name__}")
    if x.dim() == 1:
        x = x[:, None]
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (n, d) or (n,), got {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty, shape {tuple(x.shape)}; expected (n, d) with n, d >= 1")
    return x


def _pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Both samples as points ``(n, d), (m, d)`` of the same dimension and dtype."""
    x, y = _as_points(x, "x"), _as_points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]} "
                         f"(shapes {tuple(x.shape)} and {tuple(y.shape)})")
    _same_dtype(x=x, y=y)
    return x, y


def _scales(bandwidth: float | Sequence[float]) -> list[float]:
    single = isinstance(bandwidth, (int, float)) or (isinstance(bandwidth, Tensor) and bandwidth.dim() == 0)
    sigmas = [bandwidth] if single else list(bandwidth)
    if len(sigmas) == 0 or not all(s > 0 and math.isfinite(s) for s in sigmas):
        raise ValueError(f"bandwidths must be positive (and at least one), got {sigmas}")
    return sigmas


def _weights(w: Tensor | None, x: Tensor, name: str) -> Tensor:
    if w is None:
        return x.new_full((x.shape[0],), 1 / x.shape[0])
    if w.shape != (x.shape[0],):
        raise ValueError(f"weights {name} must have shape ({x.shape[0]},), got {tuple(w.shape)}")
    _same_dtype(**{"the points": x, f"the weights {name}": w})
    return w.to(x.device)


def _probability(w: Tensor | None, name: str) -> None:
    """Raise a ValueError unless the weights ``w`` (if given) are finite, >= 0 and sum to 1."""
    if w is None:
        return
    w = w.detach()
    total = float(w.sum())
    if not torch.isfinite(w).all() or (w < 0).any() or abs(total - 1) > 1e-4:
        raise ValueError(f"weights {name} must be finite, non-negative and sum to 1; got sum {total:.6g}"
                         f" and min {float(w.min()):.3g}")


def gaussian_kernel(x: Tensor, y: Tensor, bandwidth: float | Sequence[float] = 1.0) -> Tensor:
    r""":math:`k(x, y) = \frac1S\sum_s \exp(-\|x - y\|^2 / 2\sigma_s^2)`; ``(n, d), (m, d) -> (n, m)``.

    A sequence of bandwidths gives the multi-scale kernel (their average), book :eq:`eq-mmd-kernels`.
    """
    x, y = _pair(x, y)
    sq = torch.cdist(x, y).pow(2)  # (n, m)
    sigmas = _scales(bandwidth)
    return sum(torch.exp(-sq / (2 * s**2)) for s in sigmas) / len(sigmas)


def laplace_kernel(x: Tensor, y: Tensor, bandwidth: float | Sequence[float] = 1.0) -> Tensor:
    r""":math:`k(x, y) = \frac1S\sum_s \exp(-\|x - y\| / \sigma_s)`; ``(n, d), (m, d) -> (n, m)`` (:eq:`eq-mmd-kernels`)."""
    x, y = _pair(x, y)
    dist = torch.cdist(x, y)  # (n, m)
    sigmas = _scales(bandwidth)
    return sum(torch.exp(-dist / s) for s in sigmas) / len(sigmas)


def energy_kernel(x: Tensor, y: Tensor) -> Tensor:
    r""":math:`k(x, y) = -\|x - y\|`; ``(n, d), (m, d) -> (n, m)`` (:eq:`eq-mmd-kernels`).

    Only conditionally positive definite, which is enough for measures of equal total mass: its
    :math:`\mathrm{MMD}^2` is the energy distance :math:`2\E\|X - Y\| - \E\|X - X'\| - \E\|Y - Y'\|`.
    The distance is smoothed by :math:`10^{-12}` so that its gradient is finite at coincident points.
    """
    x, y = _pair(x, y)
    sq = (x[:, None, :] - y[None, :, :]).pow(2).sum(-1)  # (n, m)
    return -(sq + 1e-24).sqrt()


def imq_kernel(x: Tensor, y: Tensor, bandwidth: float = 1.0) -> Tensor:
    r"""Inverse multiquadric :math:`k(x, y) = (1 + \|x - y\|^2/\sigma^2)^{-1/2}`; ``(n, d), (m, d) -> (n, m)``.

    Positive definite and characteristic, with a heavy tail: :math:`k \sim \sigma/\|x - y\|`, so
    its pull decays like :math:`\sigma/r^2` instead of exponentially (book :eq:`eq-mmd-kernel-shapes`).
    """
    x, y = _pair(x, y)
    (sigma,) = _scales(bandwidth)
    return (1 + torch.cdist(x, y).pow(2) / sigma**2).rsqrt()


def gaussian_blur(points: Tensor, x: Tensor, bandwidth: float = 1.0, mu: Tensor | None = None) -> Tensor:
    r"""The measure :math:`\mu = \sum_i \mu_i \delta_{x_i}` blurred by the square root of the Gaussian kernel.

    :math:`(g \star \mu)(p) = \sum_i \mu_i\, g(p - x_i)` with
    :math:`g = (2\pi\sigma^2)^{d/4}\, \mathcal N(0, \tfrac{\sigma^2}{2} I)`, the function whose
    autocorrelation :math:`g \star g` is the Gaussian kernel of bandwidth :math:`\sigma`, so that
    :math:`\langle\mu,\nu\rangle_k = \langle g\star\mu, g\star\nu\rangle_{L^2}` and
    :math:`\mathrm{MMD}_k(\mu, \nu) = \|g\star\mu - g\star\nu\|_{L^2}` (book :eq:`eq-mmd-blur`).
    ``points`` ``(P, d)``, ``x`` ``(n, d)``, ``mu`` ``(n,)`` (uniform when ``None``); returns ``(P,)``.
    """
    points, x = _pair(points, x)
    (sigma,) = _scales(bandwidth)
    d = x.shape[1]
    log_g = -torch.cdist(points, x).pow(2) / sigma**2 - d / 4 * math.log(math.pi * sigma**2 / 2)  # (P, n)
    return log_g.exp() @ _weights(mu, x, "mu")


def kernel_product(x: Tensor, y: Tensor, kernel: Kernel | None = None, mu: Tensor | None = None,
                   nu: Tensor | None = None) -> Tensor:
    r""":math:`\langle\mu, \nu\rangle_k = \sum_{ij} k(x_i, y_j)\,\mu_i \nu_j` (book :eq:`eq-mmd-product`).

    ``x`` ``(n, d)`` with weights ``mu`` ``(n,)``, ``y`` ``(m, d)`` with ``nu`` ``(m,)``; weights
    default to uniform :math:`1/n`, :math:`1/m`. Returns a 0-d tensor.
    """
    x, y = _pair(x, y)
    k = kernel or gaussian_kernel
    return _weights(mu, x, "mu") @ k(x, y) @ _weights(nu, y, "nu")


def mmd2(x: Tensor, y: Tensor, kernel: Kernel | None = None, unbiased: bool = False, *,
         mu: Tensor | None = None, nu: Tensor | None = None) -> Tensor:
    r""":math:`\mathrm{MMD}^2 = \|\mu - \nu\|_k^2` between the samples ``x`` ``(n, d)`` and ``y`` ``(m, d)``.

    Book :eq:`eq-mmd-mmd2`. Uniform weights unless ``mu`` ``(n,)`` / ``nu`` ``(m,)`` are given.
    Biased (V-statistic, always :math:`\ge 0` for a positive definite kernel) by default;
    ``unbiased=True`` gives the U-statistic (:eq:`eq-mmd-unbiased`, uniform weights only), which
    can be negative. ``kernel`` defaults to the Gaussian kernel with bandwidth 1. Non-empty,
    finite samples of the same dimension and dtype only (``ValueError`` otherwise).
    """
    x, y = _pair(x, y)
    _finite(x, "x"), _finite(y, "y")
    _probability(mu, "mu"), _probability(nu, "nu")
    k = kernel or gaussian_kernel
    if not unbiased:
        a, b = _weights(mu, x, "mu"), _weights(nu, y, "nu")
        return a @ k(x, x) @ a - 2 * a @ k(x, y) @ b + b @ k(y, y) @ b
    if mu is not None or nu is not None:
        raise ValueError("the unbiased estimator is defined for uniform weights only")
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError("the unbiased estimator needs at least 2 points in each sample")
    kxx, kyy = k(x, x), k(y, y)
    xx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return xx + yy - 2 * k(x, y).mean()


def kernel_field(points: Tensor, x: Tensor, y: Tensor, kernel: Kernel | None = None,
                 mu: Tensor | None = None, nu: Tensor | None = None) -> Tensor:
    r"""The field :math:`(k \star (\mu - \nu))(p) = \sum_i \mu_i k(p, x_i) - \sum_j \nu_j k(p, y_j)`.

    Book :eq:`eq-mmd-field`: :math:`\nabla_{x_i}\mathrm{MMD}^2 = 2\mu_i \nabla (k\star(\mu-\nu))(x_i)`
    for a symmetric kernel. ``points`` ``(P, d)``; returns ``(P,)``.
    """
    points, (x, y) = _as_points(points, "points"), _pair(x, y)
    _same_dtype(points=points, x=x)
    k = kernel or gaussian_kernel
    return k(points, x) @ _weights(mu, x, "mu") - k(points, y) @ _weights(nu, y, "nu")


def kernel_nll(x: Tensor, y: Tensor, bandwidth: float = 1.0, mu: Tensor | None = None,
               nu: Tensor | None = None) -> Tensor:
    r"""Kernel negative log-likelihood :math:`-\sum_j \nu_j \log \sum_i \mu_i\, \mathcal N(y_j; x_i, \sigma^2 I)`.

    The data ``y`` ``(m, d)`` (weights ``nu``) scored under the model measure ``x`` ``(n, d)``
    (weights ``mu``, summing to 1) blurred by a Gaussian of std ``bandwidth``; book
    :eq:`eq-mmd-nll`. Computed with log-sum-exp (:eq:`eq-mmd-lse`), so it stays finite where
    the plain sum of kernel values underflows to zero. Returns a 0-d tensor.
    """
    x, y = _pair(x, y)
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth}")
    _probability(mu, "mu"), _probability(nu, "nu")
    a, b = _weights(mu, x, "mu"), _weights(nu, y, "nu")
    d = x.shape[1]
    log_k = -torch.cdist(y, x).pow(2) / (2 * bandwidth**2) - d * math.log(
        math.sqrt(2 * math.pi) * bandwidth)  # (m, n)
    return -(torch.logsumexp(log_k + a.log(), dim=1) * b).sum()


def generator_loss(generator: nn.Module, y: Tensor, kernel: Kernel, latent_dim: int = 1) -> Tensor:
    r"""Unbiased :math:`\mathrm{MMD}^2(G_\#\mathcal N(0, I), \text{data})` on a batch (book :eq:`eq-mmd-generator`).

    Draws ``len(y)`` latents :math:`z \sim \mathcal N(0, I_{\text{latent\_dim}})`, pushes them
    through ``generator`` and compares :math:`G(z)` ``(B, d)`` with the data batch ``y`` ``(B, d)``
    (or ``(B,)`` in 1D); the latents have ``y``'s dtype and device, and the generator must return
    one sample per latent, of ``y``'s dimension and dtype.
    """
    y = _as_points(y, "y")
    _count(latent_dim, "latent_dim")
    z = torch.randn(y.shape[0], latent_dim, device=y.device, dtype=y.dtype)  # (B, latent_dim)
    fake = generator(z)
    if _as_points(fake, "the generator's output").shape != y.shape:
        raise ValueError(f"the generator returned {tuple(fake.shape)} for {y.shape[0]} latents; the data "
                         f"batch y is {tuple(y.shape)}: expected one sample of dimension {y.shape[1]} per latent")
    _same_dtype(**{"the generator's output": fake, "the data batch y": y})
    return mmd2(fake, y, kernel, unbiased=True)


class CurveMixture(nn.Module):
    r"""Points :math:`(t, \sum_p c_p t^p)` on a polynomial curve, the latent :math:`t` drawn from
    :math:`w\,\mathcal N(m_1, s_1^2) + (1 - w)\,\mathcal N(m_2, s_2^2)` (book :eq:`eq-mmd-curve`).

    ``forward(eps)`` maps standard normal draws ``eps`` ``(n,)`` to the weighted measure: points
    ``(2n, 2)`` (both components, reparametrised) and weights ``(2n,)``, :math:`w/n` on the first
    ``n`` and :math:`(1-w)/n` on the last ``n``, so the weight :math:`w = \operatorname{sigmoid}(\ell)`
    receives a gradient. ``sample`` draws an ordinary uniform-weight sample.
    """

    def __init__(self, coef: Sequence[float] = (0.0, 0.0, 0.0), means: Sequence[float] = (-0.5, 0.5),
                 stds: Sequence[float] = (0.5, 0.5), weight: float = 0.5):
        super().__init__()
        if not 0 < weight < 1 or min(stds) <= 0 or len(means) != 2 or len(stds) != 2:
            raise ValueError(f"need 0 < weight < 1 and two means and two positive stds; got "
                             f"weight={weight}, means={list(means)}, stds={list(stds)}")
        self.coef = nn.Parameter(torch.tensor(coef, dtype=torch.float32))
        self.means = nn.Parameter(torch.tensor(means, dtype=torch.float32))
        self.log_stds = nn.Parameter(torch.tensor(stds, dtype=torch.float32).log())
        self.logit = nn.Parameter(torch.tensor(math.log(weight / (1 - weight))))

    @property
    def weight(self) -> Tensor:
        """The mixture weight :math:`w` of the first component, a 0-d tensor in (0, 1)."""
        return torch.sigmoid(self.logit)

    def curve(self, t: Tensor) -> Tensor:
        r""":math:`(t, \sum_p c_p t^p)` for ``t`` ``(n,)``; returns ``(n, 2)``."""
        powers = t[:, None] ** torch.arange(len(self.coef), device=t.device)  # (n, P + 1)
        return torch.stack([t, powers @ self.coef.to(t)], 1)

    def forward(self, eps: Tensor) -> tuple[Tensor, Tensor]:
        r"""The model as a weighted measure :math:`\mu = \sum_i \mu_i \delta_{x_i}` (book
        :eq:`eq-mmd-curve`, weighted as in :eq:`eq-mmd-product`), differentiable in every parameter.

        Each component reparametrises the same standard normal draws ``eps`` ``(n,)``,
        :math:`t_{k,i} = m_k + s_k \varepsilon_i`, and :math:`x_{k,i} = (t_{k,i}, \sum_p c_p t_{k,i}^p)`.
        Returns the points ``(2n, 2)`` (component 1 first) and their weights ``(2n,)``:
        :math:`w/n` on the first ``n``, :math:`(1 - w)/n` on the last ``n``, summing to 1.
        """
        n = eps.shape[0]
        t = self.means.to(eps)[:, None] + self.log_stds.exp().to(eps)[:, None] * eps  # (2, n)
        w = self.weight.to(eps)
        mu = torch.cat([w.expand(n), (1 - w).expand(n)]) / n  # (2n,)
        return self.curve(t.reshape(-1)), mu

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``(n, 2)`` points: component 1 with probability :math:`w`, else component 2.

        Drawn in the parameters' dtype on their device (on the generator's device, then moved).
        """
        _count(n, "n")
        first = _random(torch.rand, (n,), self.means, generator) < self.weight
        k = (~first).long()
        t = self.means[k] + self.log_stds.exp()[k] * _random(torch.randn, (n,), self.means, generator)
        return self.curve(t)


class MMDGenerator(Model):
    r"""A generator :math:`G_\theta` trained by minimising :math:`\mathrm{MMD}^2(G_\#\mathcal N(0, I), p)`
    (book :eq:`eq-mmd-generator`), a :class:`minigen.train.Model`.

    ``loss(y)`` is :func:`generator_loss` on a data batch ``y`` ``(B, d)``; ``sample(n)`` pushes
    ``(n, latent_dim)`` standard normal draws through ``net``. It has no density: ``log_prob``
    raises. The network and kernel are chapter 4's: an MLP with 3 hidden layers of 64 units, the
    energy kernel, ``latent_dim = dim``. The recipe (Adam at 1e-2 decaying to zero along a cosine,
    batch 256, 12,000 steps in 1D and 6,000 above) is the one that met the goals on every target
    of :func:`minigen.data.targets` within 30 CPU seconds (``benchmarks/transfer.md``); the
    energy distance's pull shrinks as the fit improves, so a small learning rate sharpens narrow
    modes only slowly.
    """

    def __init__(self, dim: int, latent_dim: int | None = None, kernel: Kernel = energy_kernel,
                 net: nn.Module | None = None, hidden: int = 64, depth: int = 3,
                 recipe: dict | None = None):
        super().__init__()
        self.dim, self.latent_dim, self.kernel = dim, latent_dim or dim, kernel
        self.net = net if net is not None else mlp(self.latent_dim, dim, hidden, depth)
        self.recipe = {**dict(n_steps=12_000 if dim == 1 else 6_000, batch_size=256, lr=1e-2, schedule="cosine"),
                       **(recipe or {})}

    def loss(self, y: Tensor) -> Tensor:
        return generator_loss(self.net, self._check_batch(y, "y"), self.kernel, self.latent_dim)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.net(_random(torch.randn, (n, self.latent_dim), self._like(), generator))
