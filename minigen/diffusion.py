r"""Score matching and diffusion: noising processes, score losses, Langevin and SDE/ODE samplers.

Data sit at :math:`t = 0` and noise at :math:`t = 1`. A forward SDE
:math:`\d x = f(x, t)\,\d t + g(t)\,\d W` with linear drift has Gaussian marginals

.. math:: x_t = \alpha_t x_0 + \sigma_t \varepsilon, \qquad \varepsilon \sim \N(0, I),

(:eq:`eq-diff-marginal`), so a score network is trained by denoising (:func:`diffusion_loss`) and
sampled by reversing time, either stochastically (:func:`reverse_sde_sample`,
:eq:`eq-diff-reverse-sde`) or along the probability-flow ODE (:func:`ode_sample`,
:eq:`eq-diff-pf-ode`), which also gives exact log-likelihoods (:func:`ode_log_prob`).

A *score* here is a function ``score(x, t)`` of ``x`` ``(B, d)`` and ``t`` ``(B,)`` returning
``(B, d)``.

Inputs are checked: batches must be ``(B, d)`` (a 1D sample is ``x[:, None]``), step counts
integers >= 1, noise scales and step sizes positive. Tensors that combine must share a dtype
(else ``ValueError`` naming both; nothing is converted silently); every tensor created here
(noise, times, prior draws) follows the input's dtype and device.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import Tensor, nn

from . import ode
from .data import GaussianMixture
from .networks import ConditionalMLP, _batch, _count, _positive, _random, _same_dtype
from .train import Model

__all__ = [
    "Diffusion",
    "ReverseSDE",
    "SDE",
    "VPSDE",
    "VESDE",
    "marginal_sample",
    "denoising_score_target",
    "tweedie_denoiser",
    "mixture_score",
    "stable_noise_target",
    "fisher_divergence",
    "implicit_score_matching_loss",
    "dsm_loss",
    "ScoreNet",
    "diffusion_loss",
    "langevin",
    "annealed_langevin",
    "reverse_sde_sample",
    "probability_flow",
    "ode_sample",
    "ode_log_prob",
    "GaussianPath",
    "StraightPath",
    "path_rates",
    "noise_from_score",
    "score_from_noise",
    "velocity_from_noise",
    "velocity_from_score",
    "score_from_velocity",
    "flow_matching_field",
]

Score = Callable[[Tensor, Tensor], Tensor]


def _t(t: Tensor | float, like: Tensor) -> Tensor:
    """``t`` as a ``(B,)`` tensor matching the rows of ``like``."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.numel() == 1:
        return t.reshape(1).expand(like.shape[0])
    if t.numel() != like.shape[0]:
        raise ValueError(f"t has {t.numel()} entries but x has {like.shape[0]} rows")
    return t.reshape(-1)


def _prior(n: int, dim: int, generator: torch.Generator | None, dtype: torch.dtype | None,
           device: torch.device | str | None) -> Tensor:
    """``(n, dim)`` standard normal draws in ``dtype`` on ``device`` (drawn on the generator's device)."""
    _count(n, "n"), _count(dim, "dim")
    like = torch.empty(0, dtype=dtype, device=device)
    return _random(torch.randn, (n, dim), like, generator)


class SDE(Protocol):
    r"""A forward SDE :math:`\d x = -\tfrac12 \beta_t x\,\d t + g(t)\,\d W` with Gaussian marginals."""

    def alpha(self, t: Tensor) -> Tensor: ...
    def sigma(self, t: Tensor) -> Tensor: ...
    def drift(self, x: Tensor, t: Tensor) -> Tensor: ...
    def diffusion(self, t: Tensor) -> Tensor: ...
    def prior_sample(self, n: int, dim: int, generator: torch.Generator | None = None, *,
                     dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None) -> Tensor: ...
    def prior_log_prob(self, x: Tensor) -> Tensor: ...


@dataclass
class VPSDE:
    r"""Variance preserving SDE :math:`\d x = -\tfrac12\beta(t) x\,\d t + \sqrt{\beta(t)}\,\d W` (:eq:`eq-diff-vp`).

    :math:`\beta(t) = \beta_{\min} + t(\beta_{\max} - \beta_{\min})`,
    :math:`\alpha_t = e^{-\frac12\int_0^t \beta}`, :math:`\sigma_t^2 = 1 - \alpha_t^2`;
    prior :math:`\N(0, I)`. ``t`` tensors are ``(B,)``.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0

    def beta(self, t: Tensor) -> Tensor:
        """Noise rate :math:`\\beta(t)`, ``(B,)``."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def alpha(self, t: Tensor) -> Tensor:
        """Signal scale :math:`\\alpha_t` of :eq:`eq-diff-marginal`, ``(B,)``."""
        return torch.exp(-0.5 * (self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2))

    def sigma(self, t: Tensor) -> Tensor:
        """Noise scale :math:`\\sigma_t = (1 - \\alpha_t^2)^{1/2}`, ``(B,)``."""
        return (-torch.expm1(-(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2))).sqrt()

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """Drift :math:`f(x, t) = -\\tfrac12\\beta(t) x`, ``(B, d)``."""
        return -0.5 * self.beta(t)[:, None] * x

    def diffusion(self, t: Tensor) -> Tensor:
        """Diffusion coefficient :math:`g(t) = \\beta(t)^{1/2}`, ``(B,)``."""
        return self.beta(t).sqrt()

    def prior_sample(self, n: int, dim: int, generator: torch.Generator | None = None, *,
                     dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None) -> Tensor:
        """Sample of the prior :math:`\\N(0, I)`, ``(n, dim)``, in ``dtype`` on ``device`` (default: torch's)."""
        return _prior(n, dim, generator, dtype, device)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """Log density of the prior :math:`\\N(0, I)` at ``x`` ``(B, d)``, ``(B,)``."""
        return -0.5 * (x**2).sum(1) - 0.5 * x.shape[1] * math.log(2 * math.pi)


@dataclass
class VESDE:
    r"""Variance exploding SDE :math:`\d x = \sqrt{\d s(t)^2 / \d t}\,\d W` (:eq:`eq-diff-ve`).

    Noise scale :math:`s(t) = s_{\min}(s_{\max}/s_{\min})^t`, marginal :math:`\alpha_t = 1`,
    :math:`\sigma_t^2 = s(t)^2 - s_{\min}^2`; prior :math:`\N(0, s_{\max}^2 I)`.
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0

    def _s(self, t: Tensor) -> Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def alpha(self, t: Tensor) -> Tensor:
        """Signal scale :math:`\\alpha_t = 1`, ``(B,)``."""
        return torch.ones_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        """Noise scale :math:`\\sigma_t = (s(t)^2 - s_{\\min}^2)^{1/2}`, ``(B,)``."""
        return (self._s(t) ** 2 - self.sigma_min**2).sqrt()

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """Drift :math:`f = 0`, ``(B, d)``."""
        return torch.zeros_like(x)

    def diffusion(self, t: Tensor) -> Tensor:
        """Diffusion coefficient :math:`g(t) = (\\d s(t)^2 / \\d t)^{1/2}`, ``(B,)``."""
        return self._s(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))

    def prior_sample(self, n: int, dim: int, generator: torch.Generator | None = None, *,
                     dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None) -> Tensor:
        """Sample of the prior :math:`\\N(0, s_{\\max}^2 I)`, ``(n, dim)``, in ``dtype`` on ``device``."""
        return self.sigma_max * _prior(n, dim, generator, dtype, device)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """Log density of the prior :math:`\\N(0, s_{\\max}^2 I)` at ``x`` ``(B, d)``, ``(B,)``."""
        d = x.shape[1]
        return (-0.5 * (x**2).sum(1) / self.sigma_max**2 - d * math.log(self.sigma_max)
                - 0.5 * d * math.log(2 * math.pi))


def marginal_sample(sde: SDE, x0: Tensor, t: Tensor | float,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    r"""Draw :math:`x_t = \alpha_t x_0 + \sigma_t \varepsilon` (:eq:`eq-diff-marginal`); returns ``(x_t, eps)``, both ``(B, d)``."""
    t = _t(t, _batch(x0, "x0"))
    eps = _random(torch.randn, x0.shape, x0, generator)
    return sde.alpha(t)[:, None] * x0 + sde.sigma(t)[:, None] * eps, eps


def denoising_score_target(xt: Tensor, x0: Tensor, alpha: Tensor | float,
                           sigma: Tensor | float) -> Tensor:
    r"""Score of the noising kernel, :math:`\nabla_{x_t} \log p(x_t \mid x_0) = -(x_t - \alpha x_0)/\sigma^2` (:eq:`eq-diff-dsm`).

    ``xt``, ``x0`` ``(B, d)``; ``alpha``, ``sigma`` scalars or ``(B,)``.
    """
    alpha, sigma = _t(alpha, xt)[:, None], _t(sigma, xt)[:, None]
    return -(xt - alpha * x0) / sigma**2


def tweedie_denoiser(score_t: Tensor, xt: Tensor, alpha: Tensor | float,
                     sigma: Tensor | float) -> Tensor:
    r"""Tweedie's formula :math:`\E[x_0 \mid x_t] = (x_t + \sigma^2 \nabla \log p_t(x_t)) / \alpha` (:eq:`eq-diff-tweedie`).

    ``score_t`` and ``xt`` ``(B, d)``; ``alpha``, ``sigma`` scalars or ``(B,)``.
    """
    alpha, sigma = _t(alpha, xt)[:, None], _t(sigma, xt)[:, None]
    return (xt + sigma**2 * score_t) / alpha


def mixture_score(mixture: GaussianMixture, x: Tensor, alpha: Tensor | float,
                  sigma: Tensor | float) -> Tensor:
    r"""Exact score of the noised mixture :math:`\alpha X + \sigma Z`, with a noise level per row.

    The law of :math:`\alpha X + \sigma Z` is the mixture with means :math:`\alpha\mu_k` and
    variances :math:`\alpha^2\sigma_k^2 + \sigma^2` (:eq:`eq-diff-marginal`); ``x`` ``(B, d)``,
    ``alpha``, ``sigma`` scalars or ``(B,)``; returns ``(B, d)``.
    """
    if x.dim() != 2 or x.shape[1] != mixture.dim:
        raise ValueError(f"x must have shape (B, {mixture.dim}), got {tuple(x.shape)}")
    a, s = _t(alpha, x)[:, None, None], _t(sigma, x)[:, None, None]
    mu = a * mixture.means.to(x)  # (B, K, d)
    var = a**2 * mixture.stds.to(x) ** 2 + s**2  # (B, K, d)
    diff = x[:, None, :] - mu  # (B, K, d)
    logc = -0.5 * (diff**2 / var + var.log()).sum(-1) + mixture.weights.to(x).log()  # (B, K)
    resp = torch.softmax(logc, dim=1)
    return (resp[:, :, None] * (-diff / var)).sum(1)


def stable_noise_target(xt: Tensor, reference: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    r"""Noise target averaged over the posterior of :math:`x_0` on a reference batch (:eq:`eq-diff-stf`).

    .. math:: \hat\varepsilon_i = \frac{x_{t,i} - \alpha_i \sum_j w_{ij} y_j}{\sigma_i}, \qquad
        w_{ij} \propto \exp\Big(-\frac{\lVert x_{t,i} - \alpha_i y_j\rVert^2}{2\sigma_i^2}\Big),

    Tweedie's formula with the posterior mean of :math:`x_0` estimated on the reference points
    :math:`y_j` (which should include the point each :math:`x_{t,i}` was made from).
    ``xt`` ``(B, d)``, ``reference`` ``(R, d)``, ``alpha``, ``sigma`` ``(B,)``; returns ``(B, d)``.
    """
    _batch(xt, "xt"), _batch(reference, "reference")
    if reference.shape[1] != xt.shape[1]:
        raise ValueError(f"xt is {tuple(xt.shape)} but reference is {tuple(reference.shape)}: "
                         f"the points must have the same dimension")
    _same_dtype(xt=xt, reference=reference)
    a, s = alpha[:, None], sigma[:, None]  # (B, 1)
    u = a / s**2
    # log w_ij = u x_i.y_j - u a |y_j|^2 / 2 + (a constant per row, which the softmax drops):
    # one matrix product of (u x_i, -u a / 2) with (y_j, |y_j|^2) gives every logit
    logits = (torch.cat([u * xt, -0.5 * u * a], dim=1)
              @ torch.cat([reference, (reference**2).sum(1, keepdim=True)], dim=1).T)  # (B, R)
    w = torch.softmax(logits, dim=1)
    posterior_mean = (reference.T @ w.T).T  # w @ reference, faster this way round on the CPU for d << R
    return (xt - a * posterior_mean) / s


def fisher_divergence(score: Callable[[Tensor], Tensor], true_score: Callable[[Tensor], Tensor],
                      x: Tensor) -> Tensor:
    r"""Monte Carlo Fisher divergence :math:`\tfrac12 \E_p \lVert s(x) - \nabla\log p(x)\rVert^2` (:eq:`eq-diff-fisher`), ``x ~ p`` ``(B, d)``."""
    return 0.5 * ((score(x) - true_score(x)) ** 2).sum(1).mean()


def implicit_score_matching_loss(score: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    r"""Hyvärinen's objective :math:`\E_p[\operatorname{Tr} \nabla s(x) + \tfrac12 \lVert s(x)\rVert^2]` (:eq:`eq-diff-ism`).

    Equals the Fisher divergence minus a constant. Exact trace (``d`` backward passes), kept
    differentiable for training; ``x`` ``(B, d)``.
    """
    x = x.detach().requires_grad_(True)
    s = score(x)  # (B, d)
    trace = sum(torch.autograd.grad(s[:, i].sum(), x, create_graph=True)[0][:, i]
                for i in range(x.shape[1]))
    return (trace + 0.5 * (s**2).sum(1)).mean()


def dsm_loss(score: Callable[[Tensor], Tensor], x0: Tensor, sigma: float,
             generator: torch.Generator | None = None) -> Tensor:
    r"""Denoising score matching at one noise level, :math:`\tfrac12 \E \lVert s(x_0 + \sigma\varepsilon) + \varepsilon/\sigma \rVert^2` (:eq:`eq-diff-dsm`).

    Its minimiser is the score of the *noised* density :math:`p * \N(0, \sigma^2 I)`; ``x0`` ``(B, d)``.
    """
    _batch(x0, "x0"), _positive(sigma, "sigma")
    eps = _random(torch.randn, x0.shape, x0, generator)
    return 0.5 * ((score(x0 + sigma * eps) + eps / sigma) ** 2).sum(1).mean()


class ScoreNet(nn.Module):
    r"""Noise-prediction network around the Gaussian solution, :math:`s_\theta(x, t) = -\varepsilon_\theta(x, t)/\sigma_t` (:eq:`eq-diff-eps`).

    .. math:: \varepsilon_\theta(x, t) = \sigma_t c_t^2\, x - \alpha_t \sigma_{\text{data}} c_t\,
        F_\theta(c_t x, t), \qquad c_t = (\alpha_t^2 \sigma_{\text{data}}^2 + \sigma_t^2)^{-1/2}.

    The first term is the exact noise prediction for data :math:`\N(0, \sigma_{\text{data}}^2 I)`;
    the network :math:`F_\theta` (a :class:`minigen.networks.ConditionalMLP`) learns the rest with
    unit-scale inputs and targets at every noise level, as in the preconditioning of Karras et
    al. (2022, "Elucidating the design space"). ``x`` ``(B, d)``, ``t`` ``(B,)`` or a scalar; ``forward`` returns the score
    ``(B, d)``, ``eps`` the noise prediction. Extra keyword arguments go to ``ConditionalMLP``.
    """

    def __init__(self, sde: SDE, dim: int, sigma_data: float = 1.0, **kwargs):
        super().__init__()
        self.sde, self.net = sde, ConditionalMLP(dim, **kwargs)
        self.register_buffer("sigma_data", torch.tensor(float(sigma_data)))

    def eps(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Noise prediction :math:`\\varepsilon_\\theta(x, t)`, ``(B, d)``."""
        t = _t(t, x)
        a, s = self.sde.alpha(t)[:, None], self.sde.sigma(t)[:, None]
        c = (a**2 * self.sigma_data**2 + s**2).rsqrt()  # (B, 1)
        return s * c**2 * x - a * self.sigma_data * c * self.net(c * x, t)

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Score :math:`s_\\theta(x, t) = -\\varepsilon_\\theta(x, t)/\\sigma_t`, ``(B, d)``."""
        t = _t(t, x)
        return -self.eps(x, t) / self.sde.sigma(t)[:, None]

    def loss_weight(self, t: Tensor) -> Tensor:
        r"""Weight :math:`\lambda_t = 1 + \sigma_t^2 / (\alpha_t \sigma_{\text{data}})^2` that makes the
        noise loss a unit-weight loss on :math:`F_\theta` (:eq:`eq-diff-loss`); ``(B,)``."""
        return 1 + self.sde.sigma(t) ** 2 / (self.sde.alpha(t) * self.sigma_data) ** 2


def diffusion_loss(model: ScoreNet, x0: Tensor, t_min: float = 1e-3,
                   stable_target: int = 0) -> Tensor:
    r"""Weighted noise-prediction loss :math:`\E_{t,\varepsilon}\, \lambda_t \lVert \varepsilon_\theta(x_t, t) - \varepsilon \rVert^2`, :math:`t \sim U(t_{\min}, 1)` (:eq:`eq-diff-loss`).

    Denoising score matching (:eq:`eq-diff-dsm`) at every noise level, weighted by
    :math:`2\lambda_t \sigma_t^2`, since :math:`\lVert\varepsilon_\theta - \varepsilon\rVert^2 =
    \sigma_t^2 \lVert s_\theta + \varepsilon/\sigma_t\rVert^2`;
    :math:`\lambda_t` is ``model.loss_weight(t)`` (1 for a model without one). With
    ``stable_target = k > 0`` the regression target :math:`\varepsilon` is replaced by its
    posterior average :func:`stable_noise_target` (:eq:`eq-diff-stf`), the batch being split into
    groups of ``k`` points that serve as each other's reference (cost :math:`B k` instead of
    :math:`B^2`): same minimiser as ``k`` grows, far less variance. ``x0`` ``(B, d)``, ``B`` a
    multiple of ``k``.
    """
    if isinstance(stable_target, bool) or not isinstance(stable_target, int) or stable_target < 0:
        raise TypeError(f"stable_target is a group size, an int >= 0 (0 = off), got {stable_target!r}")
    _batch(x0, "x0")
    if not 0 <= t_min < 1:
        raise ValueError(f"t_min must lie in [0, 1), got {t_min}")
    t = t_min + (1 - t_min) * torch.rand(x0.shape[0], dtype=x0.dtype, device=x0.device)
    xt, eps = marginal_sample(model.sde, x0, t)
    if stable_target:
        k = stable_target
        if x0.shape[0] % k:
            raise ValueError(f"the batch size {x0.shape[0]} must be a multiple of stable_target = {k}")
        a, s = model.sde.alpha(t), model.sde.sigma(t)
        eps = torch.cat([stable_noise_target(xt[i:i + k], x0[i:i + k], a[i:i + k], s[i:i + k])
                         for i in range(0, x0.shape[0], k)])  # faster than one batched call here
    weight = model.loss_weight(t) if hasattr(model, "loss_weight") else torch.ones_like(t)
    return (weight * ((model.eps(xt, t) - eps) ** 2).sum(1)).mean()


def langevin(score: Callable[[Tensor], Tensor], x: Tensor, step_size: float, n_steps: int,
             generator: torch.Generator | None = None) -> Tensor:
    r"""Unadjusted Langevin :math:`x \leftarrow x + \eta\, s(x) + \sqrt{2\eta}\, z` (:eq:`eq-diff-langevin`); ``x`` ``(B, d)``.

    ``step_size`` :math:`\eta > 0`, ``n_steps >= 1``; :math:`z` is drawn in ``x``'s dtype on its device.
    """
    _batch(x, "x"), _positive(step_size, "step_size"), _count(n_steps, "n_steps")
    for _ in range(n_steps):
        z = _random(torch.randn, x.shape, x, generator)
        x = x + step_size * score(x) + math.sqrt(2 * step_size) * z
    return x


def annealed_langevin(score: Score, sde: SDE, x: Tensor, ts: Tensor, n_steps: int,
                      step_size: float, generator: torch.Generator | None = None) -> Tensor:
    r"""Annealed Langevin dynamics (:eq:`eq-diff-annealed`): :func:`langevin` at each level of ``ts`` in turn.

    At level :math:`t_i` the step is :math:`\eta_i = \eta\,\sigma_{t_i}^2/\sigma_{t_L}^2`, where
    :math:`t_L` is the last (smallest) level; ``ts`` ``(L,)`` decreasing, ``x`` ``(B, d)``.
    """
    _batch(x, "x"), _positive(step_size, "step_size"), _count(n_steps, "n_steps")
    if ts.dim() != 1 or ts.numel() == 0:
        raise ValueError(f"ts must be a non-empty vector of noise levels (L,), got shape {tuple(ts.shape)}")
    sigmas = sde.sigma(ts.to(x))
    for t, s in zip(ts.to(x), sigmas):
        eta = step_size * float(s / sigmas[-1]) ** 2
        x = langevin(lambda y: score(y, _t(t, y)), x, eta, n_steps, generator)
    return x


def reverse_sde_sample(score: Score, sde: SDE, x1: Tensor, n_steps: int = 500,
                       t_min: float = 1e-3, generator: torch.Generator | None = None) -> Tensor:
    r"""Euler-Maruyama on the reverse SDE :math:`\d x = [f - g^2 s]\,\d t + g\,\d\bar W` from 1 to ``t_min`` (:eq:`eq-diff-reverse-sde`).

    ``x1`` ``(B, d)`` from the prior; the last step adds no noise (drawn in ``x1``'s dtype on its
    device). ``n_steps >= 1``, ``0 <= t_min < 1``. Returns ``(B, d)``.
    """
    _batch(x1, "x1"), _count(n_steps, "n_steps")
    if not 0 <= t_min < 1:
        raise ValueError(f"t_min must lie in [0, 1), got {t_min}")
    ts = torch.linspace(1.0, t_min, n_steps + 1, dtype=x1.dtype)  # scalars only: stays on the CPU
    x = x1
    for k in range(n_steps):
        t, h = _t(ts[k], x), float(ts[k] - ts[k + 1])
        g = sde.diffusion(t)[:, None]
        x = x - (sde.drift(x, t) - g**2 * score(x, t)) * h
        if k < n_steps - 1:
            x = x + g * math.sqrt(h) * _random(torch.randn, x.shape, x, generator)
    return x


def probability_flow(score: Score, sde: SDE) -> Callable[[Tensor, Tensor], Tensor]:
    r"""Velocity of the probability-flow ODE, :math:`v(x, t) = f(x, t) - \tfrac12 g(t)^2 s(x, t)` (:eq:`eq-diff-pf-ode`)."""
    def v(x: Tensor, t: Tensor) -> Tensor:
        return sde.drift(x, t) - 0.5 * sde.diffusion(t)[:, None] ** 2 * score(x, t)
    return v


def ode_sample(score: Score, sde: SDE, x1: Tensor, n_steps: int = 25, t_min: float = 1e-3,
               step: ode.Step = ode.rk4_step) -> Tensor:
    """Integrate the probability-flow ODE from ``t = 1`` down to ``t_min``; ``x1`` ``(B, d)`` from the prior."""
    if not 0 <= t_min < 1:
        raise ValueError(f"t_min must lie in [0, 1), got {t_min}")
    return ode.odeint(probability_flow(score, sde), x1, 1.0, t_min, n_steps, step)


def ode_log_prob(score: Score, sde: SDE, x: Tensor, n_steps: int = 100, t_min: float = 1e-3,
                 step: ode.Step = ode.rk4_step,
                 divergence: Callable[..., tuple[Tensor, Tensor]] = ode.divergence_exact) -> Tensor:
    r"""Model log density at ``x`` ``(B, d)`` by the instantaneous change of variables (:eq:`eq-diff-ode-likelihood`).

    :math:`\log q(x) = \log \pi(x_1) + \int_{t_{\min}}^1 \nabla\cdot v(x_t, t)\,\d t`, integrating
    the probability-flow ODE forward from the data point; returns ``(B,)``.
    """
    if not 0 <= t_min < 1:
        raise ValueError(f"t_min must lie in [0, 1), got {t_min}")
    x1, div = ode.odeint_with_divergence(probability_flow(score, sde), x, t_min, 1.0, n_steps,
                                         step, divergence)
    return sde.prior_log_prob(x1) + div


@dataclass
class ReverseSDE:
    """Sampler of a :class:`Diffusion`: ``n_steps`` Euler-Maruyama steps of the reverse SDE
    (:func:`reverse_sde_sample`, :eq:`eq-diff-reverse-sde`). The alternative is an
    :class:`minigen.ode.Solver` on the probability-flow ODE."""

    n_steps: int = 100


class Diffusion(Model):
    r"""A score network, its forward SDE and a sampler: a :class:`minigen.train.Model`.

    ``loss(x0)`` is :func:`diffusion_loss` with the stable target (groups of ``stable_target``
    points, :eq:`eq-diff-stf`); ``sample`` draws from the prior at :math:`t = 1` and integrates
    back to ``t_min`` with ``sampler``: an :class:`minigen.ode.Solver` on the probability-flow
    ODE (:eq:`eq-diff-pf-ode`, the same code as flow matching's) or :class:`ReverseSDE`.
    ``log_prob`` always uses the ODE (:eq:`eq-diff-ode-likelihood`), with ``sampler`` if it is a
    solver, else a default one. The defaults are chapter 6's: a VE SDE from 0.01 to 50, a
    :class:`ScoreNet` with 3 hidden layers of 64 units and 4 Fourier frequencies up to 4,
    20 RK4 steps; 4,000 training steps in 1D (the four-mode 1D target reached a noise-floor
    ratio of 1.15 with them), 2,000 otherwise. ``sigma_data=None`` takes the data's standard
    deviation from the first training batch (:meth:`prepare`).
    """

    def __init__(self, dim: int, sde: SDE | None = None, score: ScoreNet | None = None,
                 sigma_data: float | None = None, sampler: ode.Solver | ReverseSDE = ode.Solver(),
                 stable_target: int = 256, t_min: float = 1e-3, hidden: int = 64, depth: int = 3,
                 recipe: dict | None = None):
        super().__init__()
        self.dim, self.sde = dim, sde if sde is not None else VESDE(sigma_min=0.01, sigma_max=50.0)
        self.score = score if score is not None else ScoreNet(
            self.sde, dim, sigma_data=sigma_data or 1.0, hidden=hidden, depth=depth, n_freq=4,
            max_freq=4.0)
        self._scale_known = sigma_data is not None or score is not None
        self.sampler, self.stable_target, self.t_min = sampler, stable_target, t_min
        self.recipe = {**dict(n_steps=4_000 if dim == 1 else 2_000, batch_size=1_024, lr=5e-3,
                              schedule="cosine"), **(recipe or {})}

    def prepare(self, batch: Tensor) -> None:
        """Set ``sigma_data`` to the standard deviation of the first batch, unless it was given."""
        if not self._scale_known:
            self.score.sigma_data.fill_(float(self._check_batch(batch).std()))
            self._scale_known = True

    def loss(self, x0: Tensor) -> Tensor:
        return diffusion_loss(self.score, self._check_batch(x0, "x0"), self.t_min,
                              stable_target=self.stable_target)

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """The probability-flow velocity :func:`probability_flow` of the score network, ``(B, d)``."""
        return probability_flow(self.score, self.sde)(x, t)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        like = self._like()
        x1 = self.sde.prior_sample(n, self.dim, generator, dtype=like.dtype, device=like.device)
        if isinstance(self.sampler, ReverseSDE):
            with torch.no_grad():
                return reverse_sde_sample(self.score, self.sde, x1, self.sampler.n_steps,
                                          self.t_min, generator)
        return self.sampler.transport(self.velocity, x1, t_base=1.0, t_data=self.t_min)

    def log_prob(self, x: Tensor) -> Tensor:
        solver = self.sampler if isinstance(self.sampler, ode.Solver) else ode.Solver()
        return solver.log_prob(self.velocity, self._check_batch(x, "x"), self.sde.prior_log_prob,
                               t_data=self.t_min, t_base=1.0)


# --- From diffusion to flow matching (book page "From diffusion to flow matching") -------------
#
# A Gaussian path x_t = alpha_t x_0 + sigma_t eps (data at t = 0) has three equivalent
# parametrisations of what a network learns: the score s, the noise prediction eps_hat and the
# velocity v. The conversions below are pointwise in (x, t); every ``alpha``, ``sigma``,
# ``dalpha``, ``dsigma`` is a scalar or a ``(B,)`` tensor, every other tensor ``(B, d)``.


class GaussianPath(Protocol):
    r"""A Gaussian probability path :math:`x_t = \alpha_t x_0 + \sigma_t \varepsilon` (:eq:`eq-bridge-path`).

    Any :class:`SDE` is one; chapter 7's straight line with a standard normal source is another
    (:math:`\alpha_t = 1 - t`, :math:`\sigma_t = t` in chapter 6's time). ``t`` ``(B,)``.
    """

    def alpha(self, t: Tensor) -> Tensor: ...
    def sigma(self, t: Tensor) -> Tensor: ...


class StraightPath:
    r"""Chapter 7's straight line from :math:`\N(0, I)` on chapter 6's clock (data at :math:`t = 0`):
    :math:`\alpha_t = 1 - t`, :math:`\sigma_t = t` (:eq:`eq-bridge-path`). ``t`` ``(B,)``."""

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t

    def sigma(self, t: Tensor) -> Tensor:
        return t


def path_rates(path: GaussianPath, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""The schedules and their time derivatives :math:`(\alpha_t, \sigma_t, \dot\alpha_t, \dot\sigma_t)` (:eq:`eq-bridge-conditional-velocity`).

    Derivatives by forward-mode autograd of ``path.alpha`` and ``path.sigma`` (elementwise in
    ``t``), so any path with differentiable schedules works, under ``torch.no_grad`` too.
    ``t`` ``(B,)``; returns four ``(B,)`` tensors.
    """
    if not isinstance(t, Tensor) or t.dim() != 1:
        raise ValueError(f"t must be a (B,) tensor of times, got {getattr(t, 'shape', type(t))}")
    ones = torch.ones_like(t)
    alpha, dalpha = torch.func.jvp(path.alpha, (t,), (ones,))
    sigma, dsigma = torch.func.jvp(path.sigma, (t,), (ones,))
    return alpha, sigma, dalpha, dsigma


def noise_from_score(score_t: Tensor, sigma: Tensor | float) -> Tensor:
    r"""Noise prediction of a score, :math:`\hat\varepsilon(x, t) = \E[\varepsilon \mid x_t = x] = -\sigma_t\, s(x, t)` (:eq:`eq-bridge-eps`).

    ``score_t`` ``(B, d)``; ``sigma`` a scalar or ``(B,)``; returns ``(B, d)``.
    """
    return -_t(sigma, _batch(score_t, "score_t"))[:, None] * score_t


def score_from_noise(eps_t: Tensor, sigma: Tensor | float) -> Tensor:
    r"""Score of a noise prediction, :math:`s(x, t) = -\hat\varepsilon(x, t)/\sigma_t` (:eq:`eq-bridge-eps`); ``(B, d)``."""
    return -eps_t / _t(sigma, _batch(eps_t, "eps_t"))[:, None]


def velocity_from_noise(eps_t: Tensor, x: Tensor, alpha: Tensor | float, sigma: Tensor | float,
                        dalpha: Tensor | float, dsigma: Tensor | float) -> Tensor:
    r"""Marginal velocity of the Gaussian path from a noise prediction (:eq:`eq-bridge-velocity`).

    .. math:: v(x, t) = \dot\alpha_t \hat x_0 + \dot\sigma_t \hat\varepsilon, \qquad
        \hat x_0 = (x - \sigma_t \hat\varepsilon)/\alpha_t,

    the conditional velocity :math:`\dot\alpha_t x_0 + \dot\sigma_t\varepsilon` with both
    unknowns replaced by their posterior means. ``eps_t``, ``x`` ``(B, d)``; returns ``(B, d)``.
    """
    _same_dtype(eps_t=eps_t, x=x)
    a, s, da, ds = (_t(c, _batch(x, "x"))[:, None] for c in (alpha, sigma, dalpha, dsigma))
    x0_hat = (x - s * eps_t) / a  # Tweedie's denoiser, eq-diff-tweedie
    return da * x0_hat + ds * eps_t


def velocity_from_score(score_t: Tensor, x: Tensor, alpha: Tensor | float, sigma: Tensor | float,
                        dalpha: Tensor | float, dsigma: Tensor | float) -> Tensor:
    r"""Marginal velocity of the Gaussian path from a score (:eq:`eq-bridge-velocity-score`).

    .. math:: v(x, t) = \frac{\dot\alpha_t}{\alpha_t}\big(x + \sigma_t^2 s(x, t)\big)
        - \sigma_t \dot\sigma_t\, s(x, t),

    which equals the probability-flow velocity :math:`f - \tfrac12 g^2 s` of the SDE with this
    path (:eq:`eq-bridge-pf-equals-fm`). ``score_t``, ``x`` ``(B, d)``; returns ``(B, d)``.
    """
    _same_dtype(score_t=score_t, x=x)
    a, s, da, ds = (_t(c, _batch(x, "x"))[:, None] for c in (alpha, sigma, dalpha, dsigma))
    return da / a * (x + s**2 * score_t) - s * ds * score_t


def score_from_velocity(v: Tensor, x: Tensor, alpha: Tensor | float, sigma: Tensor | float,
                        dalpha: Tensor | float, dsigma: Tensor | float) -> Tensor:
    r"""Score of a velocity field on the Gaussian path, the inverse of :func:`velocity_from_score`.

    .. math:: s(x, t) = \frac{v(x, t) - (\dot\alpha_t/\alpha_t)\, x}
        {\sigma_t^2 \dot\alpha_t/\alpha_t - \sigma_t\dot\sigma_t} ,

    defined where the denominator :math:`-\tfrac12 g(t)^2` is not zero (:eq:`eq-bridge-velocity-score`).
    ``v``, ``x`` ``(B, d)``; returns ``(B, d)``.
    """
    _same_dtype(v=v, x=x)
    a, s, da, ds = (_t(c, _batch(x, "x"))[:, None] for c in (alpha, sigma, dalpha, dsigma))
    denominator = s**2 * da / a - s * ds  # (B, 1), = -g(t)^2 / 2
    if (denominator == 0).any():
        raise ValueError("the path has g(t)^2 = 2 (sigma sigma' - sigma^2 alpha'/alpha) = 0 at some "
                         "t: its velocity does not determine the score there")
    return (v - da / a * x) / denominator


def flow_matching_field(score: Score, path: GaussianPath,
                        t_min: float = 1e-3) -> Callable[[Tensor, Tensor], Tensor]:
    r"""The probability-flow velocity of ``score`` in chapter 7's time (:eq:`eq-bridge-time-reversal`).

    Flow-matching time :math:`\tau = (1 - t)/(1 - t_{\min})` puts the prior (the source) at
    :math:`\tau = 0` and the data at :math:`\tau = 1`; along it

    .. math:: u(x, \tau) = -(1 - t_{\min})\, v\big(x, 1 - (1 - t_{\min})\tau\big),

    with :math:`v` from :func:`velocity_from_score` and :func:`path_rates`. Returns a field
    ``u(x, tau)`` (``x`` ``(B, d)``, ``tau`` ``(B,)``) to integrate from 0 to 1 with
    :class:`minigen.ode.Solver`, as flow matching does.
    """
    if not 0 <= t_min < 1:
        raise ValueError(f"t_min must lie in [0, 1), got {t_min}")

    def u(x: Tensor, tau: Tensor) -> Tensor:
        t = 1 - (1 - t_min) * _t(tau, x)  # (B,)
        return -(1 - t_min) * velocity_from_score(score(x, t), x, *path_rates(path, t))
    return u
