r"""Simulators written in torch: parameters :math:`\theta` in, observations :math:`x` out.

Every source-estimation task (chapter 9) maps a batch of parameters ``theta`` ``(n, dim_theta)``
to observations ``x`` ``(n, dim_x)``, differentiably in ``theta``, and carries

* the box ``low, high`` ``(dim_theta,)`` in which a source distribution is sought,
* ``sample_source(n)``: the reference source that generated the "observed" data, and
  ``source_entropy``: its exact differential entropy (nats).

The tasks, boxes and reference sources are those of the Sourcerer benchmarks
(:eq:`eq-src-pushforward`); see chapter 9. :class:`StochasticSIR` counts discrete infections and
recoveries and has no gradient (chapter 9b); its ``relaxed`` variant is differentiable.
:class:`SmearedExponential` (chapter 10) is a
simulator with a latent variable whose likelihood can still be computed exactly
(:eq:`eq-sbi-marginal`).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .networks import _random
from .ode import rk4_step

__all__ = [
    "Simulator",
    "TwoMoonsSimulator",
    "InverseKinematics",
    "SLCP",
    "GaussianMixtureSim",
    "SIR",
    "StochasticSIR",
    "SmearedExponential",
    "tasks",
]


def _randn(n: int, d: int, like: Tensor, generator: torch.Generator | None) -> Tensor:
    return _random(torch.randn, (n, d), like, generator)


def _rand(n: int, d: int, like: Tensor, generator: torch.Generator | None) -> Tensor:
    return _random(torch.rand, (n, d), like, generator)


class Simulator:
    """Base class: checks shapes, then calls ``simulate``. Subclasses set the attributes below."""

    name: str = "simulator"
    dim_theta: int
    dim_x: int
    low: Tensor
    high: Tensor
    source_entropy: float

    def __call__(self, theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Simulate ``x`` ``(n, dim_x)`` for ``theta`` ``(n, dim_theta)`` (differentiable in ``theta``)."""
        if theta.dim() != 2 or theta.shape[1] != self.dim_theta:
            raise ValueError(f"{self.name}: theta must have shape (n, {self.dim_theta}), "
                             f"got {tuple(theta.shape)}")
        return self.simulate(theta, generator)

    def simulate(self, theta: Tensor, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    def sample_source(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Parameters ``(n, dim_theta)`` from the reference source of the benchmark."""
        raise NotImplementedError

    def box_volume_log(self) -> float:
        """Log volume of the box: the largest entropy a source inside it can have."""
        return float((self.high - self.low).log().sum())


class TwoMoonsSimulator(Simulator):
    r"""Two moons (sbibm): a noisy half circle shifted by :math:`(-|\theta_1+\theta_2|, \theta_2-\theta_1)/\sqrt2`.

    Latents :math:`a \sim U(-\pi/2, \pi/2)`, :math:`r \sim N(0.1, 0.01^2)`; reference source
    :math:`U[-1, 1]^2`, box :math:`[-5, 5]^2`.
    """

    name, dim_theta, dim_x = "two moons", 2, 2
    low, high = torch.full((2,), -5.0), torch.full((2,), 5.0)
    source_entropy = math.log(4.0)

    def simulate(self, theta: Tensor, generator: torch.Generator | None) -> Tensor:
        n = theta.shape[0]
        a = math.pi * (_rand(n, 1, theta, generator) - 0.5)  # (n, 1)
        r = 0.1 + 0.01 * _randn(n, 1, theta, generator)  # (n, 1)
        p = torch.cat([r * a.cos() + 0.25, r * a.sin()], 1)  # (n, 2)
        t1, t2 = theta[:, :1], theta[:, 1:]
        return p + torch.cat([-(t1 + t2).abs(), t2 - t1], 1) / math.sqrt(2)

    def sample_source(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return 2 * torch.rand(n, 2, generator=generator) - 1


class InverseKinematics(Simulator):
    r"""A planar arm: offset :math:`\theta_1`, three joint angles; :math:`x` is the hand's position.

    :math:`x_1 = \theta_1 + \sum_j l_j \sin(\phi_j)`, :math:`x_2 = \sum_j l_j \cos(\phi_j)` with
    :math:`\phi_j = \theta_2 + \dots + \theta_{j+1}` plus :math:`0.01^\circ` angle noise, arm
    lengths (0.5, 0.5, 1). Reference source :math:`N(0, \operatorname{diag}(1/16, 1/4, 1/4, 1/4))`,
    box :math:`[-\pi, \pi]^4`.
    """

    name, dim_theta, dim_x = "inverse kinematics", 4, 2
    low, high = torch.full((4,), -math.pi), torch.full((4,), math.pi)
    std = torch.tensor([0.25, 0.5, 0.5, 0.5])
    source_entropy = float(2 * math.log(2 * math.pi * math.e) + torch.log(std).sum())
    lengths = (0.5, 0.5, 1.0)
    noise = 0.01 / 180 * math.pi

    def simulate(self, theta: Tensor, generator: torch.Generator | None) -> Tensor:
        phi = theta[:, 1:].cumsum(1)  # (n, 3) absolute joint angles
        eps = self.noise * _randn(theta.shape[0], 6, theta, generator)
        l_ = torch.tensor(self.lengths, dtype=theta.dtype, device=theta.device)
        x1 = theta[:, 0] + (l_ * (phi + eps[:, :3]).sin()).sum(1)
        x2 = (l_ * (phi + eps[:, 3:]).cos()).sum(1)
        return torch.stack([x1, x2], 1)

    def sample_source(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.std * torch.randn(n, 4, generator=generator)


class SLCP(Simulator):
    r"""Simple likelihood, complex posterior: four draws from a 2D Gaussian, :math:`x \in \R^8`.

    Mean :math:`(\theta_1, \theta_2)`, standard deviations :math:`s_1 = \theta_3^2`,
    :math:`s_2 = \theta_4^2`, correlation :math:`\tanh\theta_5` (plus :math:`10^{-3}` on the
    diagonal of the covariance, as in the Sourcerer code). Reference source :math:`U[-3, 3]^5`,
    box :math:`[-5, 5]^5`.
    """

    name, dim_theta, dim_x = "SLCP", 5, 8
    low, high = torch.full((5,), -5.0), torch.full((5,), 5.0)
    source_entropy = 5 * math.log(6.0)

    def simulate(self, theta: Tensor, generator: torch.Generator | None) -> Tensor:
        s1, s2, rho = theta[:, 2] ** 2, theta[:, 3] ** 2, theta[:, 4].tanh()
        c11, c12, c22 = s1**2 + 1e-3, rho * s1 * s2, s2**2 + 1e-3
        a = c11.sqrt()  # Cholesky factor [[a, 0], [b, c]] of the covariance
        b = c12 / a
        c = (c22 - b**2).clamp_min(1e-12).sqrt()
        z = _randn(theta.shape[0], 8, theta, generator).view(-1, 4, 2)  # (n, 4, 2)
        x1 = theta[:, None, 0] + a[:, None] * z[..., 0]
        x2 = theta[:, None, 1] + b[:, None] * z[..., 0] + c[:, None] * z[..., 1]
        return torch.stack([x1, x2], -1).reshape(-1, 8)

    def sample_source(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return 6 * torch.rand(n, 5, generator=generator) - 3


class GaussianMixtureSim(Simulator):
    r""":math:`x = \theta + \sigma z` with :math:`\sigma = 1` or :math:`0.1` (probability 1/2 each).

    Reference source :math:`U[0.5, 1]^2`, box :math:`[-5, 5]^2`.
    """

    name, dim_theta, dim_x = "Gaussian mixture", 2, 2
    low, high = torch.full((2,), -5.0), torch.full((2,), 5.0)
    source_entropy = 2 * math.log(0.5)

    def simulate(self, theta: Tensor, generator: torch.Generator | None) -> Tensor:
        n = theta.shape[0]
        sigma = torch.where(_rand(n, 1, theta, generator) < 0.5, 0.1, 1.0)
        return theta + sigma * _randn(n, 2, theta, generator)

    def sample_source(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return 0.5 + 0.5 * torch.rand(n, 2, generator=generator)


class SIR(Simulator):
    r"""Epidemic SIR model: the infected fraction :math:`i(t)` on 49 days of a 160-day grid.

    .. math:: \dot s = -\beta s i, \quad \dot i = \beta s i - \gamma i, \qquad s(0) = 1 - 10^{-6},\ i(0) = 10^{-6},

    for :math:`\theta = (\beta, \gamma)`, integrated in log coordinates
    :math:`(\log s, \log i)` with ``substeps`` steps of :func:`minigen.ode.rk4_step` between
    observation times
    (positive by construction and stable on the whole box: the Jacobian there has eigenvalues
    :math:`\pm i\beta\sqrt{si}`, :math:`|\cdot| \le 1.5`). With the default two substeps the
    result agrees with a 64-substep solution to :math:`3 \cdot 10^{-3}` where the reference source
    lives, and to 0.09 in the extreme corner :math:`\beta = 3, \gamma \to 0` (the simulator *is*
    this discretisation: data and fits use the same one). Deterministic, differentiable. The
    constant :math:`i(0)` is left out of :math:`x`. Reference source: log-normal
    :math:`\beta \sim \log N(\log 0.4, 0.5^2)`, :math:`\gamma \sim \log N(\log 0.125, 0.2^2)`;
    box :math:`[0.001, 3]^2`.
    """

    name, dim_theta, dim_x = "SIR", 2, 49
    low, high = torch.full((2,), 0.001), torch.full((2,), 3.0)
    source_entropy = (math.log(0.4) + math.log(0.125)
                      + 0.5 * math.log(2 * math.pi * math.e * 0.5**2)
                      + 0.5 * math.log(2 * math.pi * math.e * 0.2**2))

    def __init__(self, substeps: int = 2, t_max: float = 160.0, i0: float = 1e-6):
        self.substeps, self.t_max, self.i0 = substeps, t_max, i0

    def simulate(self, theta: Tensor, generator: torch.Generator | None) -> Tensor:
        return _SIRSolve.apply(theta, self)

    def solve(self, theta: Tensor, sensitivities: bool = False) -> tuple[Tensor, Tensor | None]:
        r"""Integrate for ``theta`` ``(n, 2)`` without autograd: ``x`` ``(n, 49)`` and, if asked,
        :math:`\partial x / \partial (\beta, \gamma)` ``(2, n, 49)``.

        The sensitivities :math:`S = \partial(\log s, \log i)/\partial(\beta, \gamma)` follow the
        variational equation :math:`\dot S = J_f S + \partial f / \partial\theta`, integrated by the
        same RK4 steps as the state; for an explicit Runge-Kutta method this *is* the derivative of
        the discrete solution, so the gradient equals backpropagation through the steps (to
        rounding) at about two thirds of its cost, with no graph of 400 small operations.
        """
        beta, gamma = theta[:, 0], theta[:, 1]  # (n,)
        y = theta.new_zeros(6 if sensitivities else 2, theta.shape[0])
        y[0], y[1] = math.log1p(-self.i0), math.log(self.i0)  # (log s, log i); S(0) = 0

        def f(y: Tensor, t: Tensor) -> Tensor:  # d/dt (a, b) = (-beta e^b, beta e^a - gamma)
            e = y[:2].exp()  # (e^a, e^b)
            be = beta * e
            if not sensitivities:
                return torch.stack([-be[1], be[0] - gamma])
            a_b, a_g, b_b, b_g = y[2:]  # d(a, b)/d(beta, gamma)
            return torch.stack([-be[1], be[0] - gamma, -e[1] - be[1] * b_b, -be[1] * b_g,
                                e[0] + be[0] * a_b, be[0] * a_g - 1])

        h, t = self.t_max / self.dim_x / self.substeps, torch.zeros(())
        out, dout = [], []
        for _ in range(self.dim_x):
            for _ in range(self.substeps):
                y = rk4_step(f, y, t, h)  # the field does not depend on t
            out.append(y[1])
            if sensitivities:
                dout.append(y[4:6])
        x = torch.stack(out, 1).exp()  # (n, 49)
        return x, (torch.stack(dout, 2) * x if sensitivities else None)  # dx = x d(log i)

    def sample_source(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, 2, generator=generator)
        return torch.stack([0.4 * (0.5 * z[:, 0]).exp(), 0.125 * (0.2 * z[:, 1]).exp()], 1)


class StochasticSIR(Simulator):
    r"""A chain-binomial SIR epidemic in a population of ``population``: whole people, no gradient.

    Every ``dt`` days each susceptible is infected with probability
    :math:`p_I = 1 - e^{-\beta I \Delta t / N}` and each infected recovers with
    :math:`p_R = 1 - e^{-\gamma \Delta t}`:

    .. math:: \Delta_I \sim \mathrm{Bin}(S, p_I), \quad \Delta_R \sim \mathrm{Bin}(I, p_R), \qquad
              S \leftarrow S - \Delta_I, \quad I \leftarrow I + \Delta_I - \Delta_R ,

    from :math:`I_0` = ``i0`` infected; :math:`x` ``(n, dim_x)`` is the infected fraction
    :math:`I/N` every ``every`` steps (:eq:`eq-sur-chain`). The draws are integers, so :math:`x`
    has no derivative in :math:`\theta = (\beta, \gamma)` ``(n, 2)``: the output never requires a
    gradient. With ``relaxed=True`` each binomial is replaced by the Gaussian of the same mean and
    variance, :math:`np + \sqrt{np(1-p)}\, z` clipped to :math:`[0, n]` (:eq:`eq-sur-relaxed`):
    a differentiable approximation, no longer whole people. Reference source as :class:`SIR`
    (log-normal :math:`\beta`, :math:`\gamma`); box :math:`[0.05, 2.5] \times [0.05, 0.25]`.
    """

    name, dim_theta = "stochastic SIR", 2
    low, high = torch.tensor([0.05, 0.05]), torch.tensor([2.5, 0.25])
    source_entropy = SIR.source_entropy

    def __init__(self, population: int = 1000, i0: int = 10, dt: float = 2.0, n_steps: int = 40,
                 every: int = 4, relaxed: bool = False):
        if not 0 < i0 <= population or n_steps % every:
            raise ValueError(f"need 0 < i0 <= population and every dividing n_steps, got i0={i0}, "
                             f"population={population}, n_steps={n_steps}, every={every}")
        self.population, self.i0, self.dt, self.n_steps, self.every = population, i0, dt, n_steps, every
        self.relaxed, self.dim_x = relaxed, n_steps // every

    def _draw(self, n: Tensor, p: Tensor, generator: torch.Generator | None) -> Tensor:
        r""":math:`\mathrm{Bin}(n, p)`, or its moment-matched Gaussian if ``relaxed``."""
        if not self.relaxed:
            return torch.binomial(n, p, generator=generator)
        z = _random(torch.randn, tuple(n.shape), n, generator)
        return torch.minimum((n * p + (n * p * (1 - p)).clamp_min(1e-12).sqrt() * z).clamp_min(0), n)

    def simulate(self, theta: Tensor, generator: torch.Generator | None) -> Tensor:
        theta = theta if self.relaxed else theta.detach()
        beta, gamma = theta[:, 0], theta[:, 1]  # (n,)
        s = torch.full_like(beta, float(self.population - self.i0))
        i = torch.full_like(beta, float(self.i0))
        p_r = 1 - torch.exp(-gamma * self.dt)  # (n,)
        out = []
        for k in range(self.n_steps):
            infected = self._draw(s, 1 - torch.exp(-beta * i * self.dt / self.population), generator)
            recovered = self._draw(i, p_r, generator)
            s, i = s - infected, i + infected - recovered
            if (k + 1) % self.every == 0:
                out.append(i / self.population)
        return torch.stack(out, 1)  # (n, dim_x)

    def sample_source(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return SIR.sample_source(self, n, generator)


class _SIRSolve(torch.autograd.Function):
    """``SIR.solve`` as an autograd function: forward sensitivities give the backward pass."""

    @staticmethod
    def forward(ctx, theta: Tensor, sir: SIR) -> Tensor:  # type: ignore[override]
        x, dx = sir.solve(theta.detach(), sensitivities=ctx.needs_input_grad[0])
        ctx.save_for_backward(dx if dx is not None else theta.new_empty(0))
        return x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_x: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (dx,) = ctx.saved_tensors  # (2, n, 49)
        return torch.einsum("knt,nt->nk", dx, grad_x), None


def tasks() -> dict[str, Simulator]:
    """The five source-estimation tasks of chapter 9, by short name."""
    return {"two_moons": TwoMoonsSimulator(), "ik": InverseKinematics(), "slcp": SLCP(),
            "gmm": GaussianMixtureSim(), "sir": SIR()}


class SmearedExponential(Simulator):
    r"""A decay time :math:`z \sim \mathrm{Exp}(\theta)` seen through a detector: :math:`x = z + \sigma\varepsilon`.

    The latent :math:`z` makes :math:`p(x|\theta) = \int p(x|z)\, p(z|\theta)\, dz` an integral;
    here it has a closed form (an exponentially modified Gaussian),

    .. math:: \log p(x|\theta) = \log\theta + \tfrac12\theta^2\sigma^2 - \theta x
              + \log\Phi(x/\sigma - \theta\sigma),

    and :meth:`log_prob_quadrature` computes the integral numerically. The joint ratio and the
    joint score only need :math:`p(z|\theta)`: :math:`\log r(x, z) = \log(\theta_0/\theta_1)
    - (\theta_0 - \theta_1) z` and :math:`t(x, z) = 1/\theta - z` (:eq:`eq-sbi-joint`).
    As a :class:`Simulator`, ``sim(theta, generator)`` maps rates ``(n, 1)`` to observations
    ``(n, 1)``; :meth:`simulate_joint` also returns the latent decay times, which the
    likelihood-ratio methods of chapter 10 use. Shapes there: ``theta`` ``(n,)``, ``x`` and ``z``
    ``(n, 1)``. The box of rates is [0.25, 4] (its uniform law is :meth:`sample_source`).
    """

    name = "smeared exponential"
    dim_theta = dim_x = 1

    def __init__(self, sigma: float = 0.5):
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.sigma = sigma
        self.low, self.high = torch.tensor([0.25]), torch.tensor([4.0])
        self.source_entropy = math.log(4.0 - 0.25)

    def simulate(self, theta: Tensor, generator: torch.Generator | None) -> Tensor:
        """Observations ``x`` ``(n, 1)`` for rates ``theta`` ``(n, 1)`` (the latent dropped)."""
        return self.simulate_joint(theta[:, 0], generator)[0]

    def sample_source(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Rates ``(n, 1)``, uniform on the box [0.25, 4] (float32, CPU)."""
        return self.low + (self.high - self.low) * torch.rand(n, 1, generator=generator)

    @staticmethod
    def _theta(theta: Tensor | float, n: int | None = None) -> Tensor:
        if not isinstance(theta, Tensor):
            theta = torch.tensor(float(theta), dtype=torch.float64)
        if (theta <= 0).any():
            raise ValueError("theta (the decay rate) must be positive")
        return theta.reshape(-1, 1) if n is None else theta.reshape(-1, 1).expand(n, 1)

    def simulate_joint(self, theta: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Return ``(x, z)``, each ``(n, 1)``, for rates ``theta`` ``(n,)`` (in its dtype, on its device)."""
        th = self._theta(theta)
        e = _random(torch.rand, th.shape, th, generator).clamp_min(1e-12)
        z = -e.log() / th  # (n, 1) exponential by inversion
        x = z + self.sigma * _random(torch.randn, th.shape, th, generator)
        return x, z

    def log_prob(self, x: Tensor, theta: Tensor | float) -> Tensor:
        r"""Exact :math:`\log p(x|\theta)` ``(n,)`` for ``x`` ``(n, 1)`` and ``theta`` ``(n,)`` or a scalar."""
        th, s = self._theta(theta, x.shape[0] if torch.as_tensor(theta).numel() == 1 else None), self.sigma
        th = th.to(x)
        lp = th.log() + 0.5 * (th * s) ** 2 - th * x + torch.special.log_ndtr(x / s - th * s)
        return lp[:, 0]

    def log_prob_quadrature(self, x: Tensor, theta: Tensor | float, n_points: int = 4001) -> Tensor:
        r""":math:`\log \int_0^{z_{\max}} p(x|z) p(z|\theta) dz` by Simpson's rule over the latent (``n_points`` odd)."""
        if n_points < 3 or n_points % 2 == 0:
            raise ValueError(f"Simpson's rule needs an odd n_points >= 3, got {n_points}")
        th = self._theta(theta, x.shape[0] if torch.as_tensor(theta).numel() == 1 else None).to(x)
        z_max = float(x.max()) + 10 * self.sigma + 40 / float(th.min())
        z = torch.linspace(0, z_max, n_points, dtype=x.dtype, device=x.device)  # (m,)
        log_joint = (th.log() - th * z - 0.5 * ((x - z) / self.sigma) ** 2
                     - math.log(self.sigma * math.sqrt(2 * math.pi)))  # (n, m)
        w = torch.ones(n_points, dtype=x.dtype, device=x.device)
        w[1:-1:2], w[2:-1:2] = 4.0, 2.0
        w = w * z_max / (n_points - 1) / 3
        return torch.logsumexp(log_joint + w.log(), dim=1)

    def joint_log_ratio(self, z: Tensor, theta0: Tensor | float, theta1: Tensor | float) -> Tensor:
        r""":math:`\log r(x, z|\theta_0, \theta_1) = \log p(z|\theta_0) - \log p(z|\theta_1)`, ``(n,)``."""
        t0 = self._theta(theta0).to(z)[:, 0]
        t1 = self._theta(theta1).to(z)[:, 0]
        return (t0 / t1).log() - (t0 - t1) * z[:, 0]

    def joint_score(self, z: Tensor, theta: Tensor | float) -> Tensor:
        r""":math:`t(x, z|\theta) = \partial_\theta \log p(z|\theta) = 1/\theta - z`, ``(n,)``."""
        return 1 / self._theta(theta).to(z)[:, 0] - z[:, 0]
