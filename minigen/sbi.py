r"""Simulation-based inference with learned likelihood ratios (chapter 10).

A network :math:`f(x, \theta)` estimates the log likelihood ratio against a fixed reference
:math:`\theta_{\text{ref}}`,

.. math:: f(x, \theta) \approx \log r(x|\theta) = \log p(x|\theta) - \log p(x|\theta_{\text{ref}}).

It is trained on pairs :math:`x \sim p(x|\theta)` (label :math:`y = 0`) and
:math:`x \sim p(x|\theta_{\text{ref}})` (:math:`y = 1`) either as a classifier
(:func:`classifier_loss`; the optimal output :math:`c = 1/(1 + r)`), or by regression on what the
simulator knows about its latent path: the joint ratio :math:`r(x, z)` and the joint score
:math:`t(x, z)` (:func:`rolr_loss`, :func:`rascal_loss`, :func:`sally_loss`). A batch is a dict
with keys ``x`` ``(n, d)``, ``theta`` ``(n, 1)``, ``y`` ``(n,)``, ``log_r_joint`` ``(n,)``,
``t_joint`` ``(n,)`` (see :func:`ratio_training_set`). These networks are estimators, not
generative models: :func:`train_estimator` fits one to a fixed set of simulations with
:func:`minigen.train.train`.

Inputs are checked: :func:`ratio_training_set` needs a simulator object with a latent path (a
plain function raises ``TypeError`` saying what to write), statistics are 1D, and every tensor
created here follows the input's device.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .nn import _count, mlp
from .train import train

__all__ = [
    "ratio_from_classifier",
    "RatioNet",
    "ratio_training_set",
    "minibatches",
    "train_estimator",
    "classifier_loss",
    "rolr_loss",
    "rascal_loss",
    "sally_loss",
    "log_ratio_and_score",
    "calibrated_log_ratio",
    "likelihood_interval",
]


def ratio_from_classifier(c: Tensor) -> Tensor:
    r"""The likelihood ratio :math:`r = (1 - c)/c` from a classifier output :math:`c \in (0, 1)` (:eq:`eq-sbi-trick`).

    ``c`` is the classifier's probability that ``x`` was simulated at :math:`\theta_1`; any shape,
    returned elementwise.
    """
    if ((c <= 0) | (c >= 1)).any():
        raise ValueError(f"classifier outputs must lie strictly between 0 and 1, got values in "
                         f"[{float(c.min()):g}, {float(c.max()):g}]")
    return (1 - c) / c


class RatioNet(nn.Module):
    r"""MLP estimate of :math:`\log r(x|\theta)` ``(n,)`` for ``x`` ``(n, d)`` and ``theta`` ``(n, k)``.

    With ``theta_ref`` given, the output is :math:`g(x, \theta) - g(x, \theta_{\text{ref}})`, which
    vanishes at the reference exactly as the true log ratio does. SiLU activations keep
    :math:`\partial_\theta f` smooth, which the score losses need.
    """

    def __init__(self, dim_x: int, dim_theta: int = 1, hidden: int = 64, depth: int = 3,
                 theta_ref: float | Tensor | None = None):
        super().__init__()
        self.net = mlp(dim_x + dim_theta, 1, hidden, depth)
        ref = None if theta_ref is None else torch.as_tensor(theta_ref, dtype=torch.float32).reshape(1, -1)
        self.register_buffer("theta_ref", ref)

    def forward(self, x: Tensor, theta: Tensor) -> Tensor:
        """Log ratio estimates ``(n,)``."""
        out = self.net(torch.cat([x, theta], 1))[:, 0]
        if self.theta_ref is None:
            return out
        ref = self.theta_ref.to(theta).expand(len(theta), -1)
        return out - self.net(torch.cat([x, ref], 1))[:, 0]


def ratio_training_set(simulator, theta: Tensor, theta_ref: float,
                       generator: torch.Generator | None = None) -> dict[str, Tensor]:
    r"""Simulate one :math:`x \sim p(x|\theta_i)` and one :math:`x \sim p(x|\theta_{\text{ref}})` per ``theta`` ``(n,)``.

    ``simulator`` has ``simulate(theta, generator) -> (x, z)``, ``joint_log_ratio(z, theta0,
    theta1)`` and ``joint_score(z, theta)`` (e.g. :class:`minigen.simulators.SmearedExponential`).
    Returns a dict of ``2n`` rows (keys as in the module docstring); the joint score is at
    :math:`\theta_i` and is used only where ``y == 0``. A plain function raises ``TypeError``.
    """
    missing = [m for m in ("simulate", "joint_log_ratio", "joint_score") if not callable(getattr(simulator, m, None))]
    if missing:
        raise TypeError(
            f"simulator must be an object like minigen.simulators.SmearedExponential, with "
            f"simulate(theta, generator) -> (x, z), joint_log_ratio(z, theta0, theta1) and "
            f"joint_score(z, theta); got {type(simulator).__name__} "
            f"{getattr(simulator, '__name__', '')!s}, which lacks {', '.join(missing)}. A plain "
            f"function x = f(theta) hides the latent z these losses need: write a class with those "
            f"three methods (see SmearedExponential).")
    if not isinstance(theta, Tensor) or theta.dim() != 1 or theta.numel() == 0:
        raise ValueError(f"theta must be a non-empty vector (n,), got "
                         f"{tuple(theta.shape) if isinstance(theta, Tensor) else type(theta).__name__}")
    ref = torch.full_like(theta, theta_ref)
    x0, z0 = simulator.simulate(theta, generator)
    x1, z1 = simulator.simulate(ref, generator)
    z = torch.cat([z0, z1])
    th = torch.cat([theta, theta])
    return {"x": torch.cat([x0, x1]), "theta": th[:, None], "y": torch.cat([torch.zeros_like(theta),
            torch.ones_like(theta)]), "log_r_joint": simulator.joint_log_ratio(z, th, ref.repeat(2)),
            "t_joint": simulator.joint_score(z, th)}


def minibatches(data: dict[str, Tensor], batch_size: int,
                generator: torch.Generator | None = None) -> Callable[[int], dict[str, Tensor]]:
    """A ``step -> batch`` function drawing ``batch_size`` random rows of ``data`` (for :func:`minigen.train.train`)."""
    _count(batch_size, "batch_size")
    n = len(data["y"])

    def batch(step: int) -> dict[str, Tensor]:
        idx = torch.randint(n, (min(batch_size, n),), generator=generator)
        return {k: v[idx] for k, v in data.items()}

    return batch


def train_estimator(net: nn.Module, loss: Callable[[nn.Module, dict[str, Tensor]], Tensor],
                    data: dict[str, Tensor], n_steps: int, *, batch_size: int = 256,
                    lr: float = 3e-3, generator: torch.Generator | None = None) -> Tensor:
    r"""Minimise ``loss(net, batch)`` over random minibatches of a simulated data set; the losses ``(n_steps,)``.

    Adam at ``lr``, decayed to zero along a cosine over the ``n_steps``; each batch holds
    ``batch_size`` rows of ``data`` drawn with replacement by :func:`minibatches` from
    ``generator``. ``loss`` is :func:`classifier_loss` (:eq:`eq-sbi-ce`), :func:`rolr_loss`,
    :func:`rascal_loss` (:eq:`eq-sbi-rascal`) or :func:`sally_loss` (:eq:`eq-sbi-sally`).
    """
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, n_steps)
    return train(net, loss, opt, minibatches(data, batch_size, generator), n_steps,
                 scheduler=cosine, desc=getattr(loss, "__name__", "estimator"))


def classifier_loss(net: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    r"""Cross-entropy of :math:`\hat c = \sigma(-f)` against ``y``: its minimiser is :math:`f = \log r` (:eq:`eq-sbi-ce`)."""
    log_r = net(batch["x"], batch["theta"])
    return F.binary_cross_entropy_with_logits(log_r, 1 - batch["y"])


def _rolr_error(log_r: Tensor, batch: dict[str, Tensor]) -> Tensor:
    """Per-row ROLR error ``(n,)``: the ratio on reference rows, its inverse on rows from theta."""
    y, target = batch["y"], batch["log_r_joint"]
    err_ref = (target.exp() - log_r.exp()) ** 2  # y = 1: x, z ~ p(x, z|theta_ref)
    err_theta = ((-target).exp() - (-log_r).exp()) ** 2  # y = 0: x, z ~ p(x, z|theta)
    return y * err_ref + (1 - y) * err_theta


def rolr_loss(net: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    r"""ROLR: :math:`y\,|r(x,z) - \hat r(x)|^2 + (1-y)\,|1/r(x,z) - 1/\hat r(x)|^2` (:eq:`eq-sbi-rolr`).

    :math:`r(x, z) = p(x, z|\theta)/p(x, z|\theta_{\text{ref}})` is regressed on rows simulated
    at the reference (``y == 1``) and :math:`1/r(x, z)` on rows simulated at :math:`\theta`
    (``y == 0``): by :eq:`eq-sbi-unbiased` the conditional mean of a joint ratio is the ratio
    only over the latent posterior at its *denominator's* parameter, so the per-:math:`x`
    minimiser is the exact :math:`r(x|\theta)`. Returns a scalar.
    """
    return _rolr_error(net(batch["x"], batch["theta"]), batch).mean()


def log_ratio_and_score(net: nn.Module, x: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
    r""":math:`f(x, \theta)` ``(n,)`` and :math:`\partial_\theta f(x, \theta)` ``(n,)`` (graph kept for training)."""
    theta = theta.detach().requires_grad_(True)
    log_r = net(x, theta)
    (score,) = torch.autograd.grad(log_r.sum(), theta, create_graph=True)
    return log_r, score[:, 0]


def rascal_loss(net: nn.Module, batch: dict[str, Tensor], alpha: float = 1.0) -> Tensor:
    r"""RASCAL: ROLR plus :math:`\alpha\,(1-y)\,|t(x,z|\theta) - \partial_\theta \log\hat r(x|\theta)|^2` (:eq:`eq-sbi-rascal`).

    The score term uses the rows simulated at :math:`\theta` (``y == 0``), where
    :math:`\E[t(x, z|\theta)|x] = \partial_\theta \log p(x|\theta)`. Returns a scalar.
    """
    log_r, score = log_ratio_and_score(net, batch["x"], batch["theta"])
    err_t = (batch["t_joint"] - score) ** 2
    return (_rolr_error(log_r, batch) + alpha * (1 - batch["y"]) * err_t).mean()


def sally_loss(net: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    r"""SALLY: :math:`|t(x, z|\theta_{\text{ref}}) - \hat t(x)|^2` for ``net(x)`` ``(n, 1)`` (:eq:`eq-sbi-sally`)."""
    return ((batch["t_joint"] - net(batch["x"])[:, 0]) ** 2).mean()


def calibrated_log_ratio(stat: Tensor, stat0: Tensor, stat1: Tensor, n_bins: int = 40) -> Tensor:
    r"""Histogram calibration: :math:`\log \hat p(\hat c|\theta_0) - \log \hat p(\hat c|\theta_1)` at ``stat`` (:eq:`eq-sbi-calib`).

    ``stat0`` ``(n0,)`` and ``stat1`` ``(n1,)`` are a statistic's values on fresh samples from
    :math:`\theta_0` and :math:`\theta_1`; bins are equal-mass for the pooled sample, with one
    pseudo-count per bin. Returns ``(m,)`` for ``stat`` ``(m,)``.
    """
    if stat0.dim() != 1 or stat1.dim() != 1 or stat.dim() != 1:
        raise ValueError(f"stat, stat0 and stat1 must be 1D, got shapes {tuple(stat.shape)}, "
                         f"{tuple(stat0.shape)}, {tuple(stat1.shape)}")
    if stat0.numel() == 0 or stat1.numel() == 0:
        raise ValueError(f"stat0 and stat1 must be non-empty, got {stat0.numel()} and {stat1.numel()} values")
    _count(n_bins, "n_bins")
    pooled = torch.cat([stat0, stat1]).double()
    edges = torch.quantile(pooled, torch.linspace(0, 1, n_bins + 1, dtype=torch.float64,
                                                  device=pooled.device))
    inner = edges[1:-1].contiguous()

    def log_hist(s: Tensor) -> Tensor:
        counts = torch.bincount(torch.bucketize(s.double(), inner), minlength=n_bins) + 1.0
        return (counts / counts.sum()).log()

    table = log_hist(stat0) - log_hist(stat1)  # (n_bins,) the bin widths cancel
    return table[torch.bucketize(stat.double(), inner)].to(stat.dtype)


def likelihood_interval(theta: Tensor, log_lik: Tensor, level: float = 0.6827) -> tuple[float, float, float]:
    r"""Maximum-likelihood estimate and the interval :math:`\{\theta: 2[\ell(\hat\theta) - \ell(\theta)] \le q\}`.

    ``theta`` ``(m,)`` is an increasing grid and ``log_lik`` ``(m,)`` the log likelihood (up to a
    constant) on it; :math:`q` is the ``level`` quantile of :math:`\chi^2_1` (Wilks' theorem,
    :eq:`eq-sbi-wilks`), 1 for 68.27%. Interval ends are linearly interpolated. Returns
    ``(mle, low, high)``.
    """
    if theta.shape != log_lik.shape or theta.dim() != 1:
        raise ValueError("theta and log_lik must be 1D of equal length")
    q = 2 * torch.special.erfinv(torch.tensor(level, dtype=torch.float64)) ** 2  # chi2_1 quantile
    t, d = theta.double(), 2 * (log_lik.double().max() - log_lik.double())
    k = int(d.argmin())
    inside = d <= q
    lo_i, hi_i = k, k
    while lo_i > 0 and inside[lo_i - 1]:
        lo_i -= 1
    while hi_i < len(t) - 1 and inside[hi_i + 1]:
        hi_i += 1

    def cross(i: int, j: int) -> float:  # where d crosses q between grid points i (inside) and j
        return float(t[i] + (q - d[i]) / (d[j] - d[i]) * (t[j] - t[i]))

    low = cross(lo_i, lo_i - 1) if lo_i > 0 else float(t[0])
    high = cross(hi_i, hi_i + 1) if hi_i < len(t) - 1 else float(t[-1])
    return float(t[k]), low, high
