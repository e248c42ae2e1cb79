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

from .networks import _count, mlp
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
    "alices_loss",
    "log_ratio_and_score",
    "calibrated_log_ratio",
    "log_ratio_grid",
    "MixtureDensity",
    "likelihood_training_set",
    "nle_loss",
    "scandal_loss",
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

    ``simulator`` has ``simulate_joint(theta, generator) -> (x, z)``, ``joint_log_ratio(z, theta0,
    theta1)`` and ``joint_score(z, theta)`` (e.g. :class:`minigen.simulators.SmearedExponential`).
    Returns a dict of ``2n`` rows (keys as in the module docstring); the joint score is at
    :math:`\theta_i` and is used only where ``y == 0``. A plain function raises ``TypeError``.
    """
    missing = [m for m in ("simulate_joint", "joint_log_ratio", "joint_score") if not callable(getattr(simulator, m, None))]
    if missing:
        raise TypeError(
            f"simulator must be an object like minigen.simulators.SmearedExponential, with "
            f"simulate_joint(theta, generator) -> (x, z), joint_log_ratio(z, theta0, theta1) and "
            f"joint_score(z, theta); got {type(simulator).__name__} "
            f"{getattr(simulator, '__name__', '')!s}, which lacks {', '.join(missing)}. A plain "
            f"function x = f(theta) hides the latent z these losses need: write a class with those "
            f"three methods (see SmearedExponential).")
    if not isinstance(theta, Tensor) or theta.dim() != 1 or theta.numel() == 0:
        raise ValueError(f"theta must be a non-empty vector (n,), got "
                         f"{tuple(theta.shape) if isinstance(theta, Tensor) else type(theta).__name__}")
    ref = torch.full_like(theta, theta_ref)
    x0, z0 = simulator.simulate_joint(theta, generator)
    x1, z1 = simulator.simulate_joint(ref, generator)
    z = torch.cat([z0, z1])
    th = torch.cat([theta, theta])
    return {"x": torch.cat([x0, x1]), "theta": th[:, None], "y": torch.cat([torch.zeros_like(theta),
            torch.ones_like(theta)]), "log_r_joint": simulator.joint_log_ratio(z, th, ref.repeat(2)),
            "t_joint": simulator.joint_score(z, th)}


def minibatches(data: dict[str, Tensor], batch_size: int,
                generator: torch.Generator | None = None) -> Callable[[int], dict[str, Tensor]]:
    """A ``step -> batch`` function drawing ``batch_size`` random rows of ``data`` (for :func:`minigen.train.train`)."""
    _count(batch_size, "batch_size")
    n = len(next(iter(data.values())))

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


def alices_loss(net: nn.Module, batch: dict[str, Tensor], alpha: float = 1.0) -> Tensor:
    r"""ALICES: cross-entropy against the joint soft label :math:`s(x, z) = 1/(1 + r(x, z))`, plus RASCAL's score term (:eq:`eq-sbi-alices`).

    :math:`\hat c = \sigma(-\log\hat r)` as in :func:`classifier_loss`; averaged over the latent
    at fixed :math:`x` the soft label is the optimal classifier output :math:`c^*(x)`, so the
    minimiser is again :math:`\log r(x|\theta)`. ``alpha = 0`` is ALICE. Returns a scalar.
    """
    log_r, score = log_ratio_and_score(net, batch["x"], batch["theta"])
    soft = torch.sigmoid(-batch["log_r_joint"])  # 1 / (1 + r(x, z))
    ce = F.binary_cross_entropy_with_logits(-log_r, soft, reduction="none")
    return (ce + alpha * (1 - batch["y"]) * (batch["t_joint"] - score) ** 2).mean()


def calibrated_log_ratio(stat: Tensor, stat0: Tensor, stat1: Tensor, n_bins: int = 40,
                         bins_from_stat1: bool = False) -> Tensor:
    r"""Histogram calibration: :math:`\log \hat p(\hat c|\theta_0) - \log \hat p(\hat c|\theta_1)` at ``stat`` (:eq:`eq-sbi-calib`).

    ``stat0`` ``(n0,)`` and ``stat1`` ``(n1,)`` are a statistic's values on fresh samples from
    :math:`\theta_0` and :math:`\theta_1`; bins are equal-mass for the pooled sample (or, with
    ``bins_from_stat1``, for ``stat1`` alone, so that a fixed :math:`\theta_1` sample fills every
    bin equally whatever the statistic), with one pseudo-count per bin. Returns ``(m,)`` for
    ``stat`` ``(m,)``.
    """
    if stat0.dim() != 1 or stat1.dim() != 1 or stat.dim() != 1:
        raise ValueError(f"stat, stat0 and stat1 must be 1D, got shapes {tuple(stat.shape)}, "
                         f"{tuple(stat0.shape)}, {tuple(stat1.shape)}")
    if stat0.numel() == 0 or stat1.numel() == 0:
        raise ValueError(f"stat0 and stat1 must be non-empty, got {stat0.numel()} and {stat1.numel()} values")
    _count(n_bins, "n_bins")
    pooled = stat1.double() if bins_from_stat1 else torch.cat([stat0, stat1]).double()
    edges = torch.quantile(pooled, torch.linspace(0, 1, n_bins + 1, dtype=torch.float64,
                                                  device=pooled.device))
    inner = edges[1:-1].contiguous()

    def log_hist(s: Tensor) -> Tensor:
        counts = torch.bincount(torch.bucketize(s.double(), inner), minlength=n_bins) + 1.0
        return (counts / counts.sum()).log()

    table = log_hist(stat0) - log_hist(stat1)  # (n_bins,) the bin widths cancel
    return table[torch.bucketize(stat.double(), inner)].to(stat.dtype)


def log_ratio_grid(log_ratio: Callable[[Tensor, Tensor], Tensor], x: Tensor, theta: Tensor) -> Tensor:
    r""":math:`\log \hat r(x_i|\theta_j)` for every event ``x`` ``(n, d)`` and grid point ``theta`` ``(m,)``: ``(n, m)``, without gradients.

    ``log_ratio(x, theta)`` takes ``theta`` ``(n, 1)`` (a :class:`RatioNet`, or a
    :class:`MixtureDensity` for :math:`\log q`). Summing the rows of one toy's events gives its
    log likelihood on the grid, up to a constant (:eq:`eq-sbi-q`).
    """
    if theta.dim() != 1:
        raise ValueError(f"theta must be a grid (m,), got shape {tuple(theta.shape)}")
    with torch.no_grad():
        return torch.stack([log_ratio(x, torch.full((len(x), 1), float(t), dtype=x.dtype, device=x.device))
                            for t in theta], 1)


class MixtureDensity(nn.Module):
    r"""A conditional density :math:`q(x|\theta) = \sum_k \pi_k(\theta)\, \mathcal N(x; \mu_k(\theta), \sigma_k(\theta)^2)` for 1D ``x``.

    A mixture density network: an MLP maps ``theta`` ``(n, k)`` to the ``n_components``
    logits, means and log scales. ``x`` is standardised by fixed ``loc`` and ``scale`` first
    (the log-determinant is added back). :meth:`log_prob` is differentiable in ``theta``, which
    :func:`scandal_loss` needs (:eq:`eq-sbi-scandal`).
    """

    def __init__(self, dim_theta: int = 1, n_components: int = 6, hidden: int = 32, depth: int = 2,
                 loc: float = 0.0, scale: float = 1.0):
        super().__init__()
        _count(n_components, "n_components")
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.net = mlp(dim_theta, 3 * n_components, hidden, depth)
        self.loc, self.scale = loc, scale

    def log_prob(self, x: Tensor, theta: Tensor) -> Tensor:
        r""":math:`\log q(x|\theta)` ``(n,)`` for ``x`` ``(n, 1)`` and ``theta`` ``(n, k)``."""
        if x.dim() != 2 or x.shape[1] != 1 or theta.dim() != 2 or len(theta) != len(x):
            raise ValueError(f"x must be (n, 1) and theta (n, k), got {tuple(x.shape)} and {tuple(theta.shape)}")
        logits, mu, log_s = self.net(theta).chunk(3, dim=1)  # each (n, K)
        u = (x - self.loc) / self.scale  # (n, 1)
        log_n = -0.5 * ((u - mu) / log_s.exp()) ** 2 - log_s - 0.5 * math.log(2 * math.pi)  # (n, K)
        return torch.logsumexp(logits.log_softmax(1) + log_n, dim=1) - math.log(self.scale)

    def forward(self, x: Tensor, theta: Tensor) -> Tensor:
        """Same as :meth:`log_prob`."""
        return self.log_prob(x, theta)


def likelihood_training_set(simulator, theta: Tensor,
                            generator: torch.Generator | None = None) -> dict[str, Tensor]:
    r"""One :math:`(x, z) \sim p(x, z|\theta_i)` per ``theta`` ``(n,)``: keys ``x`` ``(n, 1)``, ``theta`` ``(n, 1)``, ``t_joint`` ``(n,)``.

    The training set of a likelihood estimator; ``t_joint`` is the joint score
    :math:`t(x, z|\theta_i)` (:eq:`eq-sbi-joint`) that :func:`scandal_loss` regresses on.
    """
    if not isinstance(theta, Tensor) or theta.dim() != 1 or theta.numel() == 0:
        raise ValueError(f"theta must be a non-empty vector (n,), got "
                         f"{tuple(theta.shape) if isinstance(theta, Tensor) else type(theta).__name__}")
    x, z = simulator.simulate_joint(theta, generator)
    return {"x": x, "theta": theta[:, None], "t_joint": simulator.joint_score(z, theta)}


def nle_loss(net: MixtureDensity, batch: dict[str, Tensor]) -> Tensor:
    r"""Neural likelihood estimation: :math:`-\E \log q(x|\theta)` over the batch (:eq:`eq-sbi-scandal` with :math:`\alpha = 0`)."""
    return -net.log_prob(batch["x"], batch["theta"]).mean()


def scandal_loss(net: MixtureDensity, batch: dict[str, Tensor], alpha: float = 1.0) -> Tensor:
    r"""SCANDAL: :math:`\E[-\log q(x|\theta) + \alpha\, |t(x, z|\theta) - \partial_\theta \log q(x|\theta)|^2]` (:eq:`eq-sbi-scandal`).

    The score of the density is taken by autograd (graph kept), the joint score ``t_joint`` is its
    unbiased target as in :func:`rascal_loss`. Returns a scalar.
    """
    log_q, score = log_ratio_and_score(net, batch["x"], batch["theta"])
    return (-log_q + alpha * (batch["t_joint"] - score) ** 2).mean()
