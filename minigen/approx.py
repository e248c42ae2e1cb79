r"""Function approximation: distances between functions, networks built by hand, and regression
with a predictive band.

- :func:`lp_distance` measures :math:`\lVert f - g \rVert_p` on an interval (``p = inf`` is the
  uniform distance).
- :func:`relu_interpolant` writes the piecewise-linear interpolant of ``f`` as a one-hidden-layer
  ReLU network; :func:`sawtooth_network` builds a deep, narrow ReLU network with exponentially
  many linear pieces. :func:`n_parameters` and :func:`width_for_parameters` compare networks at an
  equal parameter count.
- :func:`gaussian_nll`, :func:`mean_variance`, :func:`mean_variance_loss`,
  :func:`predictive_band` and :func:`coverage` fit a mean and a variance by Gaussian negative
  log-likelihood and check the resulting band on held-out data; :class:`HeteroscedasticSine` is
  the noisy 1D target with a known mean and standard deviation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn.functional import softplus

__all__ = ["lp_distance", "relu_interpolant", "random_relu_features", "fit_readout",
           "sawtooth_network", "n_parameters",
           "width_for_parameters", "HeteroscedasticSine", "squared_error_loss", "gaussian_nll", "mean_variance",
           "mean_variance_loss", "predictive_band", "coverage"]

Function = Callable[[Tensor], Tensor]


def lp_distance(f: Function, g: Function, bounds: tuple[float, float], p: float = 2.0,
                n: int = 20_001) -> float:
    r"""The :math:`L_p` distance of two functions on an interval, :eq:`eq-fa-lp`.

    .. math:: \lVert f - g \rVert_p = \Big(\int_a^b \lvert f(x) - g(x) \rvert^p \, \d x\Big)^{1/p},
              \qquad \lVert f - g \rVert_\infty = \sup_{a \le x \le b} \lvert f(x) - g(x) \rvert,

    evaluated on ``n`` equally spaced points (trapezoidal rule; the maximum over them for
    ``p = inf``). ``f`` and ``g`` map ``(n, 1)`` float64 points to ``(n, 1)`` (or ``(n,)``) values.
    """
    a, b = bounds
    if not b > a:
        raise ValueError(f"bounds must satisfy a < b, got {bounds}")
    if not p >= 1:
        raise ValueError(f"p must be >= 1 (or inf), got {p}")
    x = torch.linspace(a, b, n, dtype=torch.float64)[:, None]  # (n, 1)
    with torch.no_grad():
        gap = (f(x).reshape(n) - g(x).reshape(n)).abs().double()  # (n,)
    if math.isinf(p):
        return float(gap.max())
    return float(torch.trapezoid(gap**p, x[:, 0]) ** (1 / p))


def relu_interpolant(f: Function, knots: Tensor) -> nn.Sequential:
    r"""The piecewise-linear interpolant of ``f`` as a one-hidden-layer ReLU network, :eq:`eq-fa-relu`.

    .. math:: N(x) = f(t_0) + \sum_{i=0}^{n-2} c_i \, \mathrm{ReLU}(x - t_i), \qquad
              c_i = s_i - s_{i-1}, \quad s_i = \frac{f(t_{i+1}) - f(t_i)}{t_{i+1} - t_i}, \quad s_{-1} = 0,

    with width :math:`n - 1` for :math:`n` increasing knots. On :math:`[t_0, t_{n-1}]` it equals
    ``f`` at every knot and is linear in between, so for equally spaced knots
    :math:`\lVert N - f \rVert_\infty \le h^2 \max \lvert f'' \rvert / 8` :eq:`eq-fa-interp-error`.
    Returns a float64 ``nn.Sequential`` mapping ``(m, 1) -> (m, 1)``.
    """
    t = torch.as_tensor(knots, dtype=torch.float64).reshape(-1)  # (n,)
    if t.numel() < 2 or not (t[1:] > t[:-1]).all():
        raise ValueError("knots must be at least 2 strictly increasing points")
    with torch.no_grad():
        y = f(t[:, None]).reshape(-1).double()  # (n,)
    s = (y[1:] - y[:-1]) / (t[1:] - t[:-1])  # (n - 1,) slopes
    c = s - torch.cat([s.new_zeros(1), s[:-1]])  # (n - 1,) changes of slope
    net = nn.Sequential(nn.Linear(1, len(c)), nn.ReLU(), nn.Linear(len(c), 1)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.ones(len(c), 1))
        net[0].bias.copy_(-t[:-1])
        net[2].weight.copy_(c[None, :])
        net[2].bias.copy_(y[:1])
    return net


def random_relu_features(width: int, bounds: tuple[float, float],
                         generator: torch.Generator | None = None) -> nn.Sequential:
    r"""A random hidden layer :math:`\phi_i(x) = \mathrm{ReLU}(s_i (x - t_i))`, :eq:`eq-fa-shallow`.

    Kinks :math:`t_i \sim \mathcal U(a, b)` and signs :math:`s_i = \pm 1`, so that the features
    bend inside the interval. Returns ``nn.Sequential(Linear(1, width), ReLU())`` in float64,
    mapping ``(m, 1) -> (m, width)``; :func:`fit_readout` then fits the output layer.
    """
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    a, b = bounds
    t = a + (b - a) * torch.rand(width, generator=generator, dtype=torch.float64)
    s = torch.randint(0, 2, (width,), generator=generator).double() * 2 - 1
    layer = nn.Linear(1, width).double()
    with torch.no_grad():
        layer.weight.copy_(s[:, None])
        layer.bias.copy_(-s * t)
    return nn.Sequential(layer, nn.ReLU())


def fit_readout(hidden: nn.Module, x: Tensor, y: Tensor) -> nn.Sequential:
    r"""Fit the output layer on top of fixed features by least squares, :eq:`eq-fa-readout`.

    .. math:: (a, c) = \arg\min_{a, c} \sum_j \big(a^\top \phi(x_j) + c - y_j\big)^2,

    solved with ``torch.linalg.lstsq``. ``x`` ``(n, 1)``, ``y`` ``(n, 1)``, ``hidden`` maps
    ``(n, 1) -> (n, h)``. Returns ``nn.Sequential(hidden, Linear(h, 1))`` (float64).
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y have different numbers of rows: {x.shape[0]} and {y.shape[0]}")
    with torch.no_grad():
        phi = hidden(x.double())  # (n, h)
        design = torch.cat([phi, torch.ones_like(phi[:, :1])], 1)  # (n, h + 1)
        coef = torch.linalg.lstsq(design, y.double().reshape(-1, 1), driver="gelsd").solution
    readout = nn.Linear(phi.shape[1], 1).double()
    with torch.no_grad():
        readout.weight.copy_(coef[:-1].T)
        readout.bias.copy_(coef[-1])
    return nn.Sequential(hidden, readout)


def sawtooth_network(depth: int) -> nn.Sequential:
    r"""A ReLU network of width 2 computing the ``depth``-fold tent map on :math:`[0, 1]`, :eq:`eq-fa-tent`.

    .. math:: T(x) = 2\,\mathrm{ReLU}(x) - 4\,\mathrm{ReLU}(x - \tfrac12), \qquad
              N = \underbrace{T \circ \dots \circ T}_{\text{depth}},

    a sawtooth with :math:`2^{\text{depth}}` linear pieces from :math:`6\,\text{depth} + 1`
    parameters. A one-hidden-layer ReLU network of width :math:`w` has at most :math:`w + 1`
    pieces, so it needs width at least :math:`2^{\text{depth}} - 1` to match it.
    Returns a float64 ``nn.Sequential`` mapping ``(m, 1) -> (m, 1)``.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    layers: list[nn.Module] = [nn.Linear(1, 2), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(2, 2), nn.ReLU()]
    layers.append(nn.Linear(2, 1))
    net = nn.Sequential(*layers).double()
    split = torch.tensor([0.0, -0.5], dtype=torch.float64)  # (x, x - 1/2)
    with torch.no_grad():
        net[0].weight.copy_(torch.ones(2, 1))
        net[0].bias.copy_(split)
        for layer in net[2:-1:2]:  # T(h) = 2 h_1 - 4 h_2, fed to the next split
            layer.weight.copy_(torch.tensor([[2.0, -4.0], [2.0, -4.0]]))
            layer.bias.copy_(split)
        net[-1].weight.copy_(torch.tensor([[2.0, -4.0]]))
        net[-1].bias.zero_()
    return net


def n_parameters(model: nn.Module) -> int:
    """The number of scalar parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def width_for_parameters(n_params: int, depth: int, in_dim: int = 1, out_dim: int = 1) -> int:
    r"""The hidden width :math:`h` whose :func:`minigen.networks.mlp` has closest to ``n_params`` parameters.

    An MLP with ``depth`` hidden layers of width :math:`h` has
    :math:`(L-1) h^2 + (d_\text{in} + L + d_\text{out}) h + d_\text{out}` parameters
    (:math:`L` = ``depth``); this solves for :math:`h` and rounds.
    """
    if depth < 1 or n_params < 1:
        raise ValueError(f"depth and n_params must be >= 1, got {depth}, {n_params}")
    a, b, c = depth - 1, in_dim + depth + out_dim, out_dim - n_params
    h = -c / b if a == 0 else (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    count = lambda w: a * w * w + b * w + out_dim  # noqa: E731
    return min({max(1, math.floor(h)), max(1, math.ceil(h))}, key=lambda w: abs(count(w) - n_params))


@dataclass(frozen=True)
class HeteroscedasticSine:
    r"""A noisy 1D regression target with known mean and standard deviation, :eq:`eq-fa-target`.

    .. math:: x \sim \mathcal U(a, b), \qquad y = \mu(x) + \sigma(x)\,\varepsilon, \quad
              \varepsilon \sim \N(0, 1), \qquad \mu(x) = \sin 2x + 0.3 x, \quad
              \sigma(x) = 0.05 + 0.1\,(1 + \sin x).
    """

    low: float = -3.0
    high: float = 3.0

    def mean(self, x: Tensor) -> Tensor:
        """:math:`\\mu(x)`, ``(n, 1) -> (n, 1)``."""
        return torch.sin(2 * x) + 0.3 * x

    def std(self, x: Tensor) -> Tensor:
        """:math:`\\sigma(x)`, ``(n, 1) -> (n, 1)``."""
        return 0.05 + 0.1 * (1 + torch.sin(x))

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw ``n`` pairs; returns ``x`` and ``y``, each ``(n, 1)`` float32."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        x = self.low + (self.high - self.low) * torch.rand(n, 1, generator=generator)
        eps = torch.randn(n, 1, generator=generator)
        return x, self.mean(x) + self.std(x) * eps


def _check_pairs(batch: Tensor) -> None:
    if batch.dim() != 2 or batch.shape[1] != 2:
        raise ValueError(f"batch must have shape (B, 2) holding (x, y), got {tuple(batch.shape)}")


def squared_error_loss(model: nn.Module, batch: Tensor) -> Tensor:
    r"""Mean squared error of a batch ``(B, 2)`` of pairs :math:`(x, y)`, :eq:`eq-fa-mse`.

    .. math:: \mathcal L(\theta) = \frac1B \sum_i \big(f_\theta(x_i) - y_i\big)^2,

    the empirical :math:`L_2` error when the :math:`x_i` fill the interval. A loss for
    :func:`minigen.train.train`; ``model`` maps ``(B, 1) -> (B, 1)``.
    """
    _check_pairs(batch)
    return ((model(batch[:, :1]) - batch[:, 1:]) ** 2).mean()


def gaussian_nll(y: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    r"""Gaussian negative log-likelihood, elementwise, :eq:`eq-fa-nll`.

    .. math:: -\log \N(y; \mu, \sigma^2) = \tfrac12 \log(2\pi\sigma^2) + \frac{(y - \mu)^2}{2\sigma^2}.

    All arguments broadcast together (e.g. ``(n, 1)``); ``var`` must be positive.
    """
    if (var <= 0).any():
        raise ValueError("var must be positive")
    return 0.5 * torch.log(2 * math.pi * var) + (y - mean) ** 2 / (2 * var)


def mean_variance(model: nn.Module, x: Tensor, min_var: float = 1e-6) -> tuple[Tensor, Tensor]:
    r"""Split a two-output network into a mean and a positive variance, :eq:`eq-fa-meanvar`.

    .. math:: (\mu_\theta(x), \sigma^2_\theta(x)) = (o_1, \ \mathrm{softplus}(o_2) + \sigma^2_{\min}),
              \qquad (o_1, o_2) = \text{model}(x).

    ``x`` is ``(n, 1)``; returns ``mean`` and ``var``, each ``(n, 1)``.
    """
    out = model(x)  # (n, 2)
    if out.dim() != 2 or out.shape[1] != 2:
        raise ValueError(f"model must output (n, 2) = (mean, raw variance), got {tuple(out.shape)}")
    return out[:, :1], softplus(out[:, 1:]) + min_var


def mean_variance_loss(model: nn.Module, batch: Tensor) -> Tensor:
    r"""Mean Gaussian NLL of a batch ``(B, 2)`` of pairs :math:`(x, y)` under :func:`mean_variance`.

    .. math:: \mathcal L(\theta) = \frac1B \sum_{i} -\log \N(y_i; \mu_\theta(x_i), \sigma^2_\theta(x_i)).

    A loss for :func:`minigen.train.train`.
    """
    _check_pairs(batch)
    mean, var = mean_variance(model, batch[:, :1])
    return gaussian_nll(batch[:, 1:], mean, var).mean()


def predictive_band(mean: Tensor, var: Tensor, level: float = 0.9) -> tuple[Tensor, Tensor]:
    r"""The central Gaussian band holding probability ``level``, :eq:`eq-fa-band`.

    .. math:: \mu \pm z\,\sigma, \qquad z = \Phi^{-1}\big(\tfrac{1 + \text{level}}{2}\big)

    (:math:`z = 1.645` for 90%). Returns ``(lower, upper)``, shaped like ``mean``.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    z = math.sqrt(2) * torch.erfinv(torch.tensor((1 + level) / 2) * 2 - 1).item()
    half = z * var.sqrt()
    return mean - half, mean + half


def coverage(y: Tensor, lower: Tensor, upper: Tensor) -> float:
    r"""The fraction of ``y`` inside its band, :eq:`eq-fa-coverage`: :math:`\frac1n \sum_i 1[l_i \le y_i \le u_i]`.

    ``y``, ``lower`` and ``upper`` have the same shape, e.g. ``(n, 1)``.
    """
    if not (y.shape == lower.shape == upper.shape):
        raise ValueError(f"shapes differ: y {tuple(y.shape)}, lower {tuple(lower.shape)}, "
                         f"upper {tuple(upper.shape)}")
    return float(((lower <= y) & (y <= upper)).double().mean())
