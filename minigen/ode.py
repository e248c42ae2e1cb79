r"""Fixed-step ODE solvers and the instantaneous change of variables.

Solvers integrate :math:`\dot x = f(x, t)` for a velocity field ``f(x, t)`` with ``x`` of shape
``(B, d)`` and ``t`` of shape ``(B,)``. A solver is a *step function* ``step(f, x, t, h)``; pick
one by passing it (composition, not a string switch). ``NFE[step]`` is its number of function
evaluations per step.

The log density transported by the flow obeys (instantaneous change of variables)

.. math:: \frac{d}{dt} \log p_t(x_t) = -\nabla \cdot f(x_t, t),

so :math:`\log p_1(x_1) = \log p_0(x_0) - \int_0^1 \nabla\cdot f(x_t, t)\,dt`, integrated here
together with :math:`x_t` by :func:`odeint_with_divergence`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import math

import torch
from torch import Tensor

from .networks import _batch, _count

__all__ = [
    "Solver",
    "euler_step",
    "midpoint_step",
    "heun_step",
    "rk4_step",
    "NFE",
    "odeint",
    "divergence_exact",
    "divergence_hutchinson",
    "odeint_with_divergence",
]

Field = Callable[[Tensor, Tensor], Tensor]
Step = Callable[[Field, Tensor, Tensor, float], Tensor]


def euler_step(f: Field, x: Tensor, t: Tensor, h: float) -> Tensor:
    r"""Euler: :math:`x + h f(x, t)`; first order."""
    return x + h * f(x, t)


def midpoint_step(f: Field, x: Tensor, t: Tensor, h: float) -> Tensor:
    r"""Explicit midpoint: :math:`x + h f(x + \tfrac h2 f(x, t), t + \tfrac h2)`; second order."""
    return x + h * f(x + 0.5 * h * f(x, t), t + 0.5 * h)


def heun_step(f: Field, x: Tensor, t: Tensor, h: float) -> Tensor:
    r"""Heun (trapezoidal predictor-corrector): :math:`x + \tfrac h2 (k_1 + k_2)`; second order."""
    k1 = f(x, t)
    k2 = f(x + h * k1, t + h)
    return x + 0.5 * h * (k1 + k2)


def rk4_step(f: Field, x: Tensor, t: Tensor, h: float) -> Tensor:
    r"""Classical Runge-Kutta: :math:`x + \tfrac h6 (k_1 + 2k_2 + 2k_3 + k_4)`; fourth order."""
    k1 = f(x, t)
    k2 = f(x + 0.5 * h * k1, t + 0.5 * h)
    k3 = f(x + 0.5 * h * k2, t + 0.5 * h)
    k4 = f(x + h * k3, t + h)
    return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


NFE: dict[Step, int] = {euler_step: 1, midpoint_step: 2, heun_step: 2, rk4_step: 4}


def odeint(f: Field, x0: Tensor, t0: float = 0.0, t1: float = 1.0, n_steps: int = 100,
           step: Step = rk4_step, return_path: bool = False) -> Tensor:
    """Integrate from ``t0`` to ``t1`` (either direction) in ``n_steps`` equal steps.

    ``x0`` ``(B, d)``; returns ``x(t1)`` ``(B, d)``, or the path ``(n_steps + 1, B, d)``.
    """
    _count(n_steps, "n_steps")
    _batch(x0, "x0")
    if not (math.isfinite(t0) and math.isfinite(t1)):
        raise ValueError(f"t0 and t1 must be finite, got {t0}, {t1}")
    h = (t1 - t0) / n_steps
    x, path = x0, [x0]
    for k in range(n_steps):
        t = torch.full((x.shape[0],), t0 + k * h, dtype=x.dtype, device=x.device)
        x = step(f, x, t, h)
        if return_path:
            path.append(x)
    return torch.stack(path) if return_path else x


def divergence_exact(f: Field, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    r"""``(f(x, t), div f)`` with the exact trace :math:`\sum_i \partial f_i / \partial x_i`; ``(B, d), (B,)``.

    Costs ``d`` backward passes: fine in low dimension.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = f(x, t)
        div = sum(torch.autograd.grad(v[:, i].sum(), x, retain_graph=True)[0][:, i]
                  for i in range(x.shape[1]))
    return v.detach(), div.detach()


def divergence_hutchinson(f: Field, x: Tensor, t: Tensor,
                          generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    r"""``(f(x, t), div f)`` with Hutchinson's estimator :math:`\varepsilon^\top J \varepsilon`.

    :math:`\varepsilon` has independent Rademacher entries, so :math:`\E[\varepsilon^\top J
    \varepsilon] = \operatorname{Tr} J`; one backward pass whatever ``d``. :math:`\varepsilon`
    is drawn in ``x``'s dtype on ``x``'s device (on the generator's device, then moved, when one is given).
    """
    device = x.device if generator is None else generator.device
    eps = torch.randint(0, 2, x.shape, generator=generator, dtype=x.dtype, device=device).to(x.device) * 2 - 1
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = f(x, t)
        (vjp,) = torch.autograd.grad(v, x, grad_outputs=eps)
    return v.detach(), (vjp * eps).sum(1).detach()


def odeint_with_divergence(f: Field, x0: Tensor, t0: float = 1.0, t1: float = 0.0,
                           n_steps: int = 100, step: Step = rk4_step,
                           divergence: Callable[..., tuple[Tensor, Tensor]] = divergence_exact
                           ) -> tuple[Tensor, Tensor]:
    r"""Integrate :math:`x` and :math:`\ell(t) = \int_{t_0}^{t} \nabla\cdot f(x_s, s)\,ds` together.

    Returns ``(x(t1), l)`` of shapes ``(B, d), (B,)``. For a flow from a base :math:`p_0` at
    :math:`t=0` to the model at :math:`t=1`, start at the data point (``t0=1``, ``t1=0``); then
    :math:`\log p_1(x) = \log p_0(x(0)) + \ell`.
    """
    d = x0.shape[1]

    def augmented(y: Tensor, t: Tensor) -> Tensor:
        v, div = divergence(f, y[:, :d], t)
        return torch.cat([v, div[:, None]], dim=1)  # (B, d + 1)

    y0 = torch.cat([x0, torch.zeros_like(x0[:, :1])], dim=1)
    y1 = odeint(augmented, y0, t0, t1, n_steps, step)
    return y1[:, :d], y1[:, d]


@dataclass
class Solver:
    r"""How a continuous-time model integrates its velocity field: one entry point for flow
    matching and for diffusion's probability-flow ODE.

    The time convention is named in each call: the base (source or prior) sits at ``t_base``,
    the data at ``t_data``. :meth:`transport` carries base draws to data; :meth:`log_prob` uses the
    instantaneous change of variables (:eq:`eq-fm-log-density`, :eq:`eq-diff-ode-likelihood`),

    .. math:: \log q(x) = \log p_{\text{base}}(x_{t_{\text{base}}})
              + \int_{t_{\text{data}}}^{t_{\text{base}}} \nabla\cdot v(x_t, t)\,dt,
              \qquad x_{t_{\text{data}}} = x.

    ``n_steps`` steps of ``step`` for sampling (``n_steps * NFE[step]`` evaluations per sample),
    ``ll_steps`` for the likelihood, with ``divergence`` (:func:`divergence_exact` or
    :func:`divergence_hutchinson`).
    """

    n_steps: int = 20
    step: Step = rk4_step
    ll_steps: int = 50
    divergence: Callable[..., tuple[Tensor, Tensor]] = divergence_exact

    def __post_init__(self) -> None:
        for name in ("n_steps", "ll_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")

    def transport(self, field: Field, x: Tensor, t_base: float, t_data: float) -> Tensor:
        """Integrate ``x`` ``(B, d)`` from ``t_base`` to ``t_data`` without a graph; ``(B, d)``."""
        with torch.no_grad():
            return odeint(field, x, t_base, t_data, self.n_steps, self.step)

    def log_prob(self, field: Field, x: Tensor, base_log_prob: Callable[[Tensor], Tensor],
                 t_data: float, t_base: float) -> Tensor:
        """Model log density at the data points ``x`` ``(B, d)``; returns ``(B,)``."""
        xb, ell = odeint_with_divergence(field, x, t_data, t_base, self.ll_steps, self.step,
                                         self.divergence)
        return base_log_prob(xb) + ell
