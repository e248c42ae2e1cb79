r"""Flow matching: interpolants, couplings, the regression loss, sampling and the model density.

A *coupling* draws pairs :math:`(x_0, x_1)` with :math:`x_0 \sim p_0` (the source, at
:math:`t = 0`) and :math:`x_1 \sim p_1` (the data, at :math:`t = 1`). An *interpolant*
:math:`x_t = \alpha_t x_0 + \beta_t x_1` joins them; its time derivative
:math:`u_t = \dot\alpha_t x_0 + \dot\beta_t x_1` is the conditional velocity. Regressing a network
:math:`v_\theta(x, t)` on it,

.. math:: \mathcal L(\theta) = \E_{t, (x_0, x_1)} \|v_\theta(x_t, t) - u_t\|^2,

recovers the marginal velocity :math:`v(x, t) = \E[u_t \mid x_t = x]`, whose ODE carries
:math:`p_0` to :math:`p_1`. Chapter 7 derives all of it; solvers live in :mod:`minigen.ode`.

Inputs are checked: batches are ``(B, d)``, ``x0`` and ``x1`` have the same shape and the same
dtype (tensors that combine must share a dtype, else ``ValueError`` naming both; nothing is
converted silently), and random draws (``t``, noise) are made in the inputs' dtype on their device.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from . import ode
from .flows import StandardNormal
from .networks import ConditionalMLP, _batch, _random, _same_dtype
from .train import Model

__all__ = [
    "FlowMatching",
    "LinearInterpolant",
    "TrigonometricInterpolant",
    "independent_coupling",
    "ot_coupling",
    "cfm_loss",
    "sample",
    "log_prob",
    "path_energy",
    "normalised_path_energy",
]

Field = Callable[[Tensor, Tensor], Tensor]


class LinearInterpolant:
    r"""Straight line :math:`x_t = (1 - t) x_0 + t x_1`, velocity :math:`u_t = x_1 - x_0` (:eq:`eq-fm-interpolant`).

    A variant overrides the four schedule methods :math:`\alpha_t, \beta_t, \dot\alpha_t,
    \dot\beta_t`; they must satisfy :math:`\alpha_0 = \beta_1 = 1`, :math:`\alpha_1 = \beta_0 = 0`.
    """

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t

    def beta(self, t: Tensor) -> Tensor:
        return t

    def dalpha(self, t: Tensor) -> Tensor:
        return -torch.ones_like(t)

    def dbeta(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def __call__(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        """:math:`x_t` for ``x0, x1`` ``(B, d)`` and ``t`` ``(B,)``; returns ``(B, d)``."""
        return self.alpha(t)[:, None] * x0 + self.beta(t)[:, None] * x1

    def velocity(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        r"""Conditional velocity :math:`u_t = \partial_t x_t` (:eq:`eq-fm-conditional-velocity`); ``(B, d)``."""
        return self.dalpha(t)[:, None] * x0 + self.dbeta(t)[:, None] * x1


class TrigonometricInterpolant(LinearInterpolant):
    r"""Variance-preserving arc :math:`x_t = \cos(\tfrac{\pi t}{2}) x_0 + \sin(\tfrac{\pi t}{2}) x_1`."""

    def alpha(self, t: Tensor) -> Tensor:
        return torch.cos(0.5 * math.pi * t)

    def beta(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * t)

    def dalpha(self, t: Tensor) -> Tensor:
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def dbeta(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * torch.cos(0.5 * math.pi * t)


def independent_coupling(x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
    r"""The product coupling :math:`p_0 \otimes p_1`: independent draws stay paired as given."""
    return x0, x1


def _pair(x0: Tensor, x1: Tensor) -> None:
    """``x0`` and ``x1``: batches ``(B, d)`` of the same shape and dtype."""
    _batch(x0, "x0"), _batch(x1, "x1")
    if x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must both be (B, d) of the same shape (coupled pairs), got "
                         f"{tuple(x0.shape)} and {tuple(x1.shape)} (no broadcasting)")
    _same_dtype(x0=x0, x1=x1)


def ot_coupling(x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
    r"""Minibatch optimal-transport coupling (:eq:`eq-fm-minibatch-ot`): re-pair ``x1`` ``(B, d)``.

    Returns ``(x0, x1[sigma])`` with :math:`\sigma` the permutation minimising
    :math:`\sum_i \|x_{0,i} - x_{1,\sigma(i)}\|^2`: by sorting in 1D (the monotone
    rearrangement is optimal for a convex cost), by ``ot.emd`` otherwise
    (:func:`minigen.ot.ot_permutation`).
    """
    _pair(x0, x1)
    if x0.shape[1] == 1:
        sigma = torch.empty_like(x0[:, 0], dtype=torch.long)
        sigma[x0[:, 0].argsort()] = x1[:, 0].argsort()  # i-th smallest x0 <-> i-th smallest x1
        return x0, x1[sigma]
    from . import ot  # POT is imported only when a minibatch plan is needed

    return x0, x1[ot.ot_permutation(x0, x1)]


def cfm_loss(model: Field, x0: Tensor, x1: Tensor,
             interpolant: LinearInterpolant = LinearInterpolant(), sigma: float = 0.0,
             generator: torch.Generator | None = None) -> Tensor:
    r"""Conditional flow-matching loss (:eq:`eq-fm-loss`) on coupled pairs ``x0, x1`` ``(B, d)``.

    :math:`t \sim U(0, 1)`; :math:`x_t` is the interpolant plus :math:`\sigma z` with
    :math:`z \sim \mathcal N(0, I)` when ``sigma > 0`` (torchcfm's :math:`\sigma_{\min}`; a
    constant :math:`\sigma` leaves the target :math:`u_t` unchanged). Returns
    :math:`\frac1B \sum_i \|v_\theta(x_{t,i}, t_i) - u_{t,i}\|^2`, a 0-d tensor. ``x0`` and
    ``x1`` must have the same shape and dtype (no broadcasting).
    """
    _pair(x0, x1)
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    t = _random(torch.rand, (x0.shape[0],), x0, generator)  # (B,)
    xt = interpolant(x0, x1, t)  # (B, d)
    if sigma > 0:
        xt = xt + sigma * _random(torch.randn, xt.shape, xt, generator)
    ut = interpolant.velocity(x0, x1, t)  # (B, d)
    return ((model(xt, t) - ut) ** 2).sum(1).mean()


def sample(model: Field, x0: Tensor, n_steps: int = 100, step: ode.Step = ode.euler_step,
           return_path: bool = False) -> Tensor:
    r"""Push source samples ``x0`` ``(B, d)`` through :math:`\dot x = v_\theta(x, t)` from 0 to 1.

    ``n_steps`` steps of ``step`` (:mod:`minigen.ode`), so ``n_steps * ode.NFE[step]`` network
    evaluations. Returns ``x(1)`` ``(B, d)`` or the path ``(n_steps + 1, B, d)``.
    """
    with torch.no_grad():
        return ode.odeint(model, x0, 0.0, 1.0, n_steps, step, return_path)


def log_prob(model: Field, x: Tensor, base_log_prob: Callable[[Tensor], Tensor],
             n_steps: int = 50, step: ode.Step = ode.rk4_step) -> Tensor:
    r"""Model log density at the data points ``x`` ``(B, d)`` (:eq:`eq-fm-log-density`); ``(B,)``.

    Integrates backwards from :math:`x_1 = x` at :math:`t = 1` to :math:`x_0` at :math:`t = 0`
    with the divergence: :math:`\log q_1(x) = \log p_0(x_0) - \int_0^1 \nabla\cdot v_\theta
    (x_t, t)\,dt`. The value belongs to ``x``, the ODE's *end* point, not to :math:`x_0`.
    """
    x0, ell = ode.odeint_with_divergence(model, x, 1.0, 0.0, n_steps, step)
    return base_log_prob(x0) + ell


def path_energy(path: Tensor) -> Tensor:
    r"""Kinetic energy :math:`\E \int_0^1 \|\dot x_t\|^2 dt` of paths ``(T + 1, B, d)`` on a uniform grid of [0, 1].

    Each segment is straight, so the energy is :math:`\frac{1}{B}\sum_{i,k} \|x_{k+1,i} -
    x_{k,i}\|^2 / h` with :math:`h = 1/T` (:eq:`eq-fm-path-energy`). Returns a 0-d tensor.
    """
    if path.dim() != 3 or path.shape[0] < 2:
        raise ValueError(f"path must be (T + 1, B, d) with T >= 1, got {tuple(path.shape)}")
    n_steps = path.shape[0] - 1
    return (path.diff(dim=0) ** 2).sum(-1).sum(0).mean() * n_steps


def normalised_path_energy(path: Tensor) -> float:
    r"""Normalised path energy :math:`(E - W_2^2) / W_2^2` (:eq:`eq-fm-npe`) of paths ``(T + 1, B, d)``.

    :math:`W_2^2` is the exact optimal cost between the paths' own start and end points, the
    least energy any flow between them can spend; 0 means the flow transports optimally along
    straight lines.
    """
    from . import ot

    w2sq = ot.wasserstein2(path[0], path[-1]) ** 2
    return (float(path_energy(path)) - w2sq) / w2sq


FM_RECIPE_1D = dict(n_steps=3_000, batch_size=2_048, lr=1e-2, schedule="one-cycle")
FM_RECIPE_2D = dict(n_steps=6_000, batch_size=512, lr=3e-3, schedule="cosine")


class FlowMatching(Model):
    r"""A velocity field :math:`v_\theta(x, t)` trained by conditional flow matching, a
    :class:`minigen.train.Model`: field + source + interpolant + coupling + solver.

    ``loss(x1)`` draws source points :math:`x_0 \sim p_0` for the data batch ``x1`` ``(B, d)``,
    pairs them with ``coupling`` and returns :func:`cfm_loss`. ``sample`` carries source draws from
    :math:`t = 0` to the data at :math:`t = 1` with ``solver`` (:class:`minigen.ode.Solver`);
    ``log_prob`` integrates back with the divergence (:eq:`eq-fm-log-density`). The defaults are
    chapter 7's: a :class:`minigen.networks.ConditionalMLP` with 3 hidden layers of 64 units and 4
    Fourier frequencies up to 4, a standard normal source, the linear interpolant, 8 RK4 steps.
    ``coupling=None`` picks chapter 7's choice per dimension: in 1D the sorted (exact minibatch OT)
    coupling with batches of 2,048 and a one-cycle schedule at :math:`10^{-2}`, whose nearly
    straight paths the 8 steps follow closely; in 2D the independent coupling with 6,000 steps on
    batches of 512 (about 9 CPU seconds; 2,000 steps on 256 left eight Gaussians at a C2ST of
    0.72, the longer run at 0.49). ``source`` is any
    law with ``sample(n, generator, dtype)`` and ``log_prob`` (a target of :mod:`minigen.data`, say).
    """

    def __init__(self, dim: int, field: nn.Module | None = None, source=None,
                 interpolant: LinearInterpolant = LinearInterpolant(),
                 coupling: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
                 sigma: float = 0.0, solver: ode.Solver = ode.Solver(n_steps=8),
                 hidden: int = 64, depth: int = 3, recipe: dict | None = None):
        super().__init__()
        self.dim = dim
        self.field = field if field is not None else ConditionalMLP(
            dim, hidden=hidden, depth=depth, n_freq=4, max_freq=4.0)
        self.source = source if source is not None else StandardNormal(dim)
        if coupling is None:
            coupling = ot_coupling if dim == 1 else independent_coupling
        self.interpolant, self.coupling, self.sigma, self.solver = interpolant, coupling, sigma, solver
        self.recipe = {**(FM_RECIPE_1D if dim == 1 else FM_RECIPE_2D), **(recipe or {})}

    def _source(self, n: int, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.source.sample(n, generator, dtype=like.dtype).to(like.device)

    def loss(self, x1: Tensor) -> Tensor:
        x1 = self._check_batch(x1, "x1")
        x0, x1 = self.coupling(self._source(len(x1), x1), x1)
        return cfm_loss(self.field, x0, x1, self.interpolant, self.sigma)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        x0 = self._source(n, self._like(), generator)
        return self.solver.transport(self.field, x0, t_base=0.0, t_data=1.0)

    def log_prob(self, x: Tensor) -> Tensor:
        return self.solver.log_prob(self.field, self._check_batch(x, "x"), self.source.log_prob,
                                    t_data=1.0, t_base=0.0)
