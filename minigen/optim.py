r"""First-order optimizers written from scratch, and the Rosenbrock test function.

Each optimizer is a real :class:`torch.optim.Optimizer`, so it plugs into
:func:`minigen.train.train`, and its ``update`` method is its update equation, one line per
symbol. With the same hyper-parameters each one reproduces the matching ``torch.optim`` class
step for step (the tests check this in float64). Notation: parameters :math:`\theta_k`, gradient
:math:`g_k = \nabla f(\theta_k)`, learning rate :math:`\eta`; squares, square roots and divisions
act elementwise.

Every update is elementwise, so a learning rate may also be a tensor that broadcasts against the
parameter: with ``x0`` of shape ``(m, 2)`` and ``lr`` of shape ``(m, 1)`` one call of
:func:`minimize` runs ``m`` independent optimizations, one per learning rate.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import Tensor

__all__ = ["rosenbrock", "SGD", "Momentum", "Nesterov", "AdaGrad", "RMSProp", "Adam", "minimize",
           "steps_to_tolerance"]


def rosenbrock(x: Tensor, a: float = 1.0, b: float = 100.0) -> Tensor:
    r"""Rosenbrock's function :math:`f(x, y) = (a - x)^2 + b (y - x^2)^2`, :eq:`eq-opt-rosenbrock`.

    Its minimum is :math:`f(a, a^2) = 0`, at the end of a narrow, curved valley.

    Args:
        x: points ``(m, 2)`` (or one point ``(2,)``).

    Returns:
        ``(m,)`` values (a 0-d tensor for one point).
    """
    if x.shape[-1] != 2:
        raise ValueError(f"rosenbrock takes points of shape (m, 2), got {tuple(x.shape)}")
    x1, x2 = x[..., 0], x[..., 1]
    return (a - x1) ** 2 + b * (x2 - x1**2) ** 2


def _positive(**values: float | Tensor) -> None:
    for name, v in values.items():
        v = torch.as_tensor(v, dtype=torch.float64)
        if not (torch.isfinite(v).all() and (v > 0).all()):
            raise ValueError(f"{name} must be positive and finite, got {v.tolist()}")


def _unit(**values: float) -> None:
    for name, v in values.items():
        if not 0.0 <= v < 1.0:
            raise ValueError(f"{name} must lie in [0, 1), got {v}")


class _Optimizer(torch.optim.Optimizer):
    """Shared ``step``: calls ``update(theta, g, state, group)`` for every parameter with a gradient."""

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """Take one step; ``closure`` (optional) re-evaluates the loss and returns it."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for theta in group["params"]:
                if theta.grad is not None:
                    self.update(theta, theta.grad, self.state[theta], group)
        return loss

    def update(self, theta: Tensor, g: Tensor, state: dict, group: dict) -> None:
        raise NotImplementedError


class SGD(_Optimizer):
    r"""Gradient descent :math:`\theta_{k+1} = \theta_k - \eta g_k`, :eq:`eq-opt-sgd`.

    Equals ``torch.optim.SGD(params, lr)``.
    """

    def __init__(self, params: Iterable, lr: float | Tensor = 1e-3):
        _positive(lr=lr)
        super().__init__(params, dict(lr=lr))

    def update(self, theta: Tensor, g: Tensor, state: dict, group: dict) -> None:
        theta -= group["lr"] * g


class Momentum(_Optimizer):
    r"""Classical (heavy-ball) momentum, :eq:`eq-opt-momentum`.

    .. math:: v_{k+1} = \mu v_k + g_k, \qquad \theta_{k+1} = \theta_k - \eta v_{k+1}, \qquad v_0 = 0.

    Equals ``torch.optim.SGD(params, lr, momentum=mu)``.
    """

    def __init__(self, params: Iterable, lr: float | Tensor = 1e-3, momentum: float = 0.9):
        _positive(lr=lr)
        _unit(momentum=momentum)
        super().__init__(params, dict(lr=lr, momentum=momentum))

    def update(self, theta: Tensor, g: Tensor, state: dict, group: dict) -> None:
        lr, mu = group["lr"], group["momentum"]
        v = state.setdefault("v", torch.zeros_like(theta))
        v.mul_(mu).add_(g)                      # v <- mu v + g
        theta -= lr * v


class Nesterov(_Optimizer):
    r"""Nesterov momentum in the form of Sutskever et al. written at the look-ahead point, :eq:`eq-opt-nesterov`.

    .. math:: v_{k+1} = \mu v_k + g_k, \qquad
              \theta_{k+1} = \theta_k - \eta \, (g_k + \mu v_{k+1}), \qquad v_0 = 0.

    Here :math:`\theta_k` is the look-ahead point of Sutskever et al.'s form (the chapter derives
    the change of variables). Equals ``torch.optim.SGD(params, lr, momentum=mu, nesterov=True)``.
    """

    def __init__(self, params: Iterable, lr: float | Tensor = 1e-3, momentum: float = 0.9):
        _positive(lr=lr)
        _unit(momentum=momentum)
        if momentum == 0:
            raise ValueError("Nesterov needs momentum > 0 (with 0 it is plain SGD)")
        super().__init__(params, dict(lr=lr, momentum=momentum))

    def update(self, theta: Tensor, g: Tensor, state: dict, group: dict) -> None:
        lr, mu = group["lr"], group["momentum"]
        v = state.setdefault("v", torch.zeros_like(theta))
        v.mul_(mu).add_(g)                      # v <- mu v + g
        theta -= lr * (g + mu * v)


class AdaGrad(_Optimizer):
    r"""AdaGrad, :eq:`eq-opt-adagrad`: a per-coordinate step shrinking with the summed squared gradients.

    .. math:: s_{k+1} = s_k + g_k^2, \qquad
              \theta_{k+1} = \theta_k - \eta \, \frac{g_k}{\sqrt{s_{k+1}} + \epsilon}, \qquad s_0 = 0.

    Equals ``torch.optim.Adagrad(params, lr, eps=eps)``.
    """

    def __init__(self, params: Iterable, lr: float | Tensor = 1e-2, eps: float = 1e-10):
        _positive(lr=lr, eps=eps)
        super().__init__(params, dict(lr=lr, eps=eps))

    def update(self, theta: Tensor, g: Tensor, state: dict, group: dict) -> None:
        s = state.setdefault("s", torch.zeros_like(theta))
        s += g**2
        theta -= group["lr"] * g / (s.sqrt() + group["eps"])


class RMSProp(_Optimizer):
    r"""RMSProp, :eq:`eq-opt-rmsprop`: AdaGrad with an exponential moving average of :math:`g^2`.

    .. math:: s_{k+1} = \alpha s_k + (1 - \alpha) g_k^2, \qquad
              \theta_{k+1} = \theta_k - \eta \, \frac{g_k}{\sqrt{s_{k+1}} + \epsilon}, \qquad s_0 = 0.

    Equals ``torch.optim.RMSprop(params, lr, alpha=alpha, eps=eps)``.
    """

    def __init__(self, params: Iterable, lr: float | Tensor = 1e-2, alpha: float = 0.99,
                 eps: float = 1e-8):
        _positive(lr=lr, eps=eps)
        _unit(alpha=alpha)
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps))

    def update(self, theta: Tensor, g: Tensor, state: dict, group: dict) -> None:
        alpha = group["alpha"]
        s = state.setdefault("s", torch.zeros_like(theta))
        s.mul_(alpha).add_((1 - alpha) * g**2)
        theta -= group["lr"] * g / (s.sqrt() + group["eps"])


class Adam(_Optimizer):
    r"""Adam, :eq:`eq-opt-adam`: momentum on :math:`g` and RMSProp scaling, both bias-corrected.

    .. math:: m_{k+1} = \beta_1 m_k + (1 - \beta_1) g_k, \quad
              v_{k+1} = \beta_2 v_k + (1 - \beta_2) g_k^2, \quad
              \theta_{k+1} = \theta_k - \eta \,
              \frac{m_{k+1} / (1 - \beta_1^{k+1})}{\sqrt{v_{k+1} / (1 - \beta_2^{k+1})} + \epsilon}.

    Equals ``torch.optim.Adam(params, lr, betas=betas, eps=eps)``.
    """

    def __init__(self, params: Iterable, lr: float | Tensor = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        _positive(lr=lr, eps=eps)
        _unit(beta1=betas[0], beta2=betas[1])
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    def update(self, theta: Tensor, g: Tensor, state: dict, group: dict) -> None:
        (b1, b2), eps = group["betas"], group["eps"]
        m = state.setdefault("m", torch.zeros_like(theta))
        v = state.setdefault("v", torch.zeros_like(theta))
        k = state["k"] = state.get("k", 0) + 1  # steps taken, counting this one
        m.mul_(b1).add_((1 - b1) * g)
        v.mul_(b2).add_((1 - b2) * g**2)
        m_hat, v_hat = m / (1 - b1**k), v / (1 - b2**k)
        theta -= group["lr"] * m_hat / (v_hat.sqrt() + eps)


def minimize(f: Callable[[Tensor], Tensor], x0: Tensor, optimizer: type[torch.optim.Optimizer],
             n_steps: int, **hyper) -> Tensor:
    r"""Run ``optimizer(params, **hyper)`` on ``f`` from ``x0``; return every iterate.

    The loss is ``f(x).sum()``: with ``x0`` of shape ``(m, 2)`` and ``f`` acting row by row (as
    :func:`rosenbrock` does) the ``m`` rows are independent runs, since each row's gradient
    depends on that row only. A row that diverges turns to ``inf``/``nan`` without disturbing
    the others.

    Args:
        f: ``(m, d) -> (m,)`` (or any shape whose sum is the loss).
        x0: starting point(s), e.g. ``(2,)`` or ``(m, 2)``.
        optimizer: an optimizer class, e.g. :class:`Adam` or ``torch.optim.Adam``.

    Returns:
        ``(n_steps + 1, *x0.shape)``: the iterates :math:`\theta_0, \dots, \theta_{n}`.
    """
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    x = x0.detach().clone().requires_grad_(True)
    opt = optimizer([x], **hyper)
    path = torch.empty((n_steps + 1, *x0.shape), dtype=x0.dtype, device=x0.device)
    path[0] = x.detach()
    for k in range(n_steps):
        opt.zero_grad(set_to_none=True)
        f(x).sum().backward()
        opt.step()
        path[k + 1] = x.detach()
    return path


def steps_to_tolerance(path: Tensor, target: Tensor, tol: float) -> Tensor:
    r"""The first step :math:`k` from which every later iterate stays within ``tol`` of ``target``.

    .. math:: k^\star = \min\{k : \lVert \theta_j - \theta^\star \rVert < \text{tol}
              \ \text{for all}\ j \ge k\},

    ``inf`` when the last iterate is not within ``tol`` (an optimizer that only passes through
    the ball does not count as having arrived).

    Args:
        path: iterates ``(T, d)`` or ``(T, m, d)`` (as returned by :func:`minimize`).
        target: ``(d,)``.

    Returns:
        float tensor, ``()`` or ``(m,)``.
    """
    if tol <= 0:
        raise ValueError(f"tol must be positive, got {tol}")
    if path.shape[-1] != target.shape[-1]:
        raise ValueError(f"path has points of size {path.shape[-1]}, target {target.shape[-1]}")
    inside = (path - target).norm(dim=-1) < tol  # (T, ...), False for nan
    # number of trailing steps that are all inside
    trailing = inside.flip(0).to(torch.int64).cumprod(0).sum(0)
    k = torch.as_tensor(path.shape[0] - trailing, dtype=torch.float64)
    return torch.where(trailing > 0, k, torch.full_like(k, math.inf))
