r"""Kernels and the maximum mean discrepancy between sampled measures.

For measures :math:`\mu = \sum_i \mu_i \delta_{x_i}` and :math:`\nu = \sum_j \nu_j \delta_{y_j}`
the kernel scalar product is :math:`\langle \mu, \nu \rangle_k = \sum_{ij} k(x_i, y_j)\mu_i\nu_j`
and, by bilinearity,

.. math:: \mathrm{MMD}^2(\mu, \nu) = \langle\mu,\mu\rangle_k - 2\langle\mu,\nu\rangle_k
          + \langle\nu,\nu\rangle_k = \|\mu - \nu\|_k^2 .

The unbiased estimator drops the diagonal terms :math:`k(x_i, x_i)` and :math:`k(y_j, y_j)`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["gaussian_kernel", "mmd2"]

Kernel = Callable[[Tensor, Tensor], Tensor]


def _as_points(x: Tensor, name: str) -> Tensor:
    if x.dim() == 1:
        x = x[:, None]
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (n, d) or (n,), got {tuple(x.shape)}")
    return x


def gaussian_kernel(x: Tensor, y: Tensor, bandwidth: float | Sequence[float] = 1.0) -> Tensor:
    r""":math:`k(x, y) = \frac1S\sum_s \exp(-\|x - y\|^2 / 2\sigma_s^2)`; ``(n, d), (m, d) -> (n, m)``.

    A sequence of bandwidths gives the multi-scale kernel (their average).
    """
    x, y = _as_points(x, "x"), _as_points(y, "y")
    sq = torch.cdist(x, y).pow(2)  # (n, m)
    sigmas = [bandwidth] if isinstance(bandwidth, (int, float)) else list(bandwidth)
    return sum(torch.exp(-sq / (2 * s**2)) for s in sigmas) / len(sigmas)


def mmd2(x: Tensor, y: Tensor, kernel: Kernel | None = None, unbiased: bool = False) -> Tensor:
    r""":math:`\mathrm{MMD}^2` between the samples ``x`` ``(n, d)`` and ``y`` ``(m, d)`` (uniform weights).

    Biased (V-statistic, always :math:`\ge 0`) by default; ``unbiased=True`` gives the U-statistic,
    which can be negative. ``kernel`` defaults to the Gaussian kernel with bandwidth 1.
    """
    x, y = _as_points(x, "x"), _as_points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    k = kernel or gaussian_kernel
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    n, m = x.shape[0], y.shape[0]
    if unbiased:
        if n < 2 or m < 2:
            raise ValueError("the unbiased estimator needs at least 2 points in each sample")
        xx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        yy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        return xx + yy - 2 * kxy.mean()
    return kxx.mean() + kyy.mean() - 2 * kxy.mean()
