r"""Differentiable stand-ins for simulators without gradients (chapter 9b).

A :class:`Surrogate` is a conditional Gaussian :math:`\tilde x = m_\psi(\theta) + S_\psi(\theta)\epsilon`
fitted to simulations by :func:`fit_surrogate`; a :class:`SurrogateEnsemble` mixes several
(:func:`fit_ensemble`); :func:`refine_surrogate` trains one further in rounds on parameters drawn
by :func:`proposal_sample`. Each is a :class:`minigen.simulators.Simulator`, so
:func:`minigen.sourcerer.estimate_source` trains a source through it as through any simulator.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .networks import _random, mlp
from .simulators import Simulator
from .sourcerer import BoxSampler
from .train import FitResult, Model, fit

__all__ = ["Surrogate", "fit_surrogate", "SurrogateEnsemble", "fit_ensemble", "proposal_sample",
           "refine_surrogate"]


class Surrogate(Simulator, Model):
    r"""A differentiable stand-in for a simulator: a conditional Gaussian with a full covariance,

    .. math:: \tilde x = m_\psi(\theta) + S_\psi(\theta)\, \epsilon, \quad \epsilon \sim N(0, I),
              \qquad \min_\psi \sum_j \tfrac12 \lVert x_j - m_\psi(\theta_j) \rVert^2
              - \log N\big(x_j;\, \mathrm{sg}[m_\psi(\theta_j)],\, S_\psi S_\psi^\top(\theta_j)\big),

    :math:`S_\psi` lower triangular with a positive diagonal, :math:`\mathrm{sg}` a stop-gradient
    (:eq:`eq-sur-gauss`): the mean network learns by least squares (the conditional mean), the
    factor network the covariance of the residuals by likelihood. Both MLPs see :math:`\theta`
    ``(n, dim_theta)`` rescaled from the box to :math:`[-1, 1]`, with ``log_theta=True`` in log
    coordinates, :math:`u = 2 (\log\theta - \log l) / (\log h - \log l) - 1` (a box of positive
    parameters only; chapter 9b), and work on standardised data
    (``x_mean``, ``x_scale`` ``(dim_x,)``, set by :func:`fit_surrogate`); the diagonal of
    :math:`S_\psi` is the exponential of a network output plus ``min_scale``.
    A :class:`minigen.simulators.Simulator` (same box; ``surrogate(theta)`` draws ``(n, dim_x)``,
    differentiable in ``theta``) and a :class:`minigen.train.Model` whose ``loss`` takes a batch
    ``(B, dim_theta + dim_x)`` of pairs :math:`(\theta, x)`. The recipe clips the gradient norm
    at 1: where :math:`S_\psi` sits near its floor a residual of one standard deviation gives a
    gradient :math:`1/\text{min\_scale}^2` times larger than usual, and an unclipped Adam step
    can throw the fit out of a good optimum for good. ``pairs`` ``(n, dim_theta + dim_x)`` keeps
    the simulations it was fitted to (set by :func:`fit_surrogate`, grown by :func:`refine_surrogate`).
    """

    def __init__(self, simulator: Simulator, hidden: int = 64, depth: int = 3, min_scale: float = 1e-3,
                 log_theta: bool = False):
        super().__init__()
        if log_theta and not bool((simulator.low > 0).all()):
            raise ValueError(f"log_theta needs a box of positive parameters, got low = {simulator.low.tolist()}")
        self.log_theta = log_theta
        self.name = f"surrogate of {simulator.name}"
        self.dim_theta, self.dim_x = simulator.dim_theta, simulator.dim_x
        self.dim, self.min_scale = self.dim_theta + self.dim_x, min_scale
        self.source_entropy = getattr(simulator, "source_entropy", math.nan)
        self.register_buffer("low", torch.as_tensor(simulator.low, dtype=torch.float32))
        self.register_buffer("high", torch.as_tensor(simulator.high, dtype=torch.float32))
        self.register_buffer("x_mean", torch.zeros(self.dim_x))
        self.register_buffer("x_scale", torch.ones(self.dim_x))
        self.register_buffer("tril", torch.tril_indices(self.dim_x, self.dim_x))
        self.mean_net = mlp(self.dim_theta, self.dim_x, hidden, depth)
        self.factor_net = mlp(self.dim_theta, self.tril.shape[1], hidden, depth)
        self.recipe = dict(n_steps=2_000, batch_size=512, lr=2e-3, schedule="cosine", clip_grad=1.0)
        self.pairs = torch.empty(0, self.dim)  # the simulations (theta, x) it was fitted to

    def _standard(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``(n, dim_x)`` and lower factor ``(n, dim_x, dim_x)`` of the standardised data."""
        if self.log_theta:  # the box in log coordinates
            u = 2 * (theta.log() - self.low.log()) / (self.high / self.low).log() - 1  # (n, dim_theta)
        else:
            u = 2 * (theta - self.low) / (self.high - self.low) - 1  # (n, dim_theta) in [-1, 1]
        mu, flat = self.mean_net(u), self.factor_net(u)  # (n, dim_x), (n, dim_x (dim_x + 1) / 2)
        factor = flat.new_zeros(len(flat), self.dim_x, self.dim_x)
        factor[:, self.tril[0], self.tril[1]] = flat
        diag = factor.diagonal(dim1=1, dim2=2).clamp_max(5).exp() + self.min_scale  # (n, dim_x)
        return mu, factor.tril(-1) + torch.diag_embed(diag)

    def moments(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        r"""Mean :math:`m_\psi(\theta)` ``(n, dim_x)`` and covariance :math:`S_\psi S_\psi^\top` ``(n, dim_x, dim_x)``."""
        mu, factor = self._standard(theta)
        factor = self.x_scale[:, None] * factor  # diag(x_scale) S
        return self.x_mean + self.x_scale * mu, factor @ factor.transpose(1, 2)

    def log_likelihood(self, theta: Tensor, x: Tensor) -> Tensor:
        r""":math:`\log N(x; m_\psi(\theta), S_\psi S_\psi^\top(\theta))` ``(n,)`` for ``theta`` ``(n, dim_theta)``, ``x`` ``(n, dim_x)``."""
        mu, factor = self._standard(theta)
        z = ((x - self.x_mean) / self.x_scale - mu)[..., None]  # (n, dim_x, 1)
        r = torch.linalg.solve_triangular(factor, z, upper=False)[..., 0]  # S^{-1}(z - mu)
        log_det = factor.diagonal(dim1=1, dim2=2).log().sum(1) + self.x_scale.log().sum()
        return -0.5 * (r**2).sum(1) - log_det - 0.5 * self.dim_x * math.log(2 * math.pi)

    def loss(self, batch: Tensor) -> Tensor:
        batch = self._check_batch(batch)
        theta, x = batch[:, :self.dim_theta], batch[:, self.dim_theta:]
        mu, factor = self._standard(theta)
        z = (x - self.x_mean) / self.x_scale  # (B, dim_x)
        r = torch.linalg.solve_triangular(factor, (z - mu.detach())[..., None], upper=False)[..., 0]
        nll = 0.5 * (r**2).sum(1) + factor.diagonal(dim1=1, dim2=2).log().sum(1)
        return (0.5 * ((z - mu) ** 2).sum(1) + nll).mean()

    def simulate(self, theta: Tensor, generator: torch.Generator | None) -> Tensor:
        mu, factor = self._standard(theta)
        eps = _random(torch.randn, (len(theta), self.dim_x, 1), theta, generator)
        return self.x_mean + self.x_scale * (mu + (factor @ eps)[..., 0])  # (n, dim_x)


def _simulate_pairs(simulator: Simulator, theta: Tensor, generator: torch.Generator | None) -> Tensor:
    """Pairs ``(n, dim_theta + dim_x)`` of ``theta`` ``(n, dim_theta)`` and one simulation each, float32."""
    with torch.no_grad():
        return torch.cat([theta, simulator(theta, generator)], 1).float()


def fit_surrogate(simulator: Simulator, n_sims: int, generator: torch.Generator | None = None,
                  hidden: int = 64, depth: int = 3, min_scale: float = 1e-3, log_theta: bool = False,
                  **fit_kwargs) -> tuple[Surrogate, FitResult]:
    r"""Simulate ``n_sims`` pairs with :math:`\theta \sim U[` ``low, high`` :math:`]` and fit a :class:`Surrogate`.

    Trained on the loss :eq:`eq-sur-gauss` by :func:`minigen.train.fit` (further arguments, such
    as ``n_steps``, ``batch_size``, ``lr``, ``clip_grad``, go there; ``generator`` draws the
    parameters, the simulator's noise and the minibatches). The data are standardised by their
    mean and standard deviation first; ``min_scale`` (in those units) bounds the diagonal of
    :math:`S_\psi` from below, so data on a grid (counts) cannot drive a variance to zero. Returns
    ``(surrogate, fit result)``; the surrogate's weights are frozen
    (``requires_grad=False``), so a :class:`minigen.sourcerer.Sourcerer` trained through it moves only its source,
    while gradients still flow to :math:`\theta`. ``surrogate.pairs`` holds the ``n_sims`` simulations.
    """
    if not isinstance(simulator, Simulator) or n_sims < 2:
        raise ValueError(f"need a minigen.simulators.Simulator and n_sims >= 2, got "
                         f"{type(simulator).__name__} and {n_sims}")
    low, high = simulator.low.float(), simulator.high.float()
    theta = low + (high - low) * _random(torch.rand, (n_sims, simulator.dim_theta), low, generator)
    surrogate = Surrogate(simulator, hidden, depth, min_scale, log_theta)
    surrogate.pairs = _simulate_pairs(simulator, theta, generator)  # (n_sims, dim_theta + dim_x)
    x = surrogate.pairs[:, simulator.dim_theta:]
    surrogate.x_mean.copy_(x.mean(0))
    surrogate.x_scale.copy_(x.std(0).clamp_min(1e-6))
    result = fit(surrogate, surrogate.pairs, desc="surrogate", generator=generator, **fit_kwargs)
    return surrogate.requires_grad_(False), result


class SurrogateEnsemble(Simulator, nn.Module):
    r"""The equal mixture of :math:`K` fitted :class:`Surrogate` members (:eq:`eq-sur-ensemble`):

    .. math:: \tilde p(x \mid \theta) = \frac1K \sum_{k=1}^K
              N\big(x;\, m_k(\theta),\, S_k S_k^\top(\theta)\big),

    simulated by drawing, for each row of ``theta`` ``(n, dim_theta)``, a member
    :math:`k \sim U\{1..K\}` and then :math:`\tilde x = m_k(\theta) + S_k(\theta)\epsilon`,
    ``(n, dim_x)``, differentiable in ``theta``. A source trained through it meets every member's
    errors at once, so it gains nothing from one member's error that the others do not share.
    ``members`` share one simulator's box; at least two.
    """

    def __init__(self, members: list[Surrogate]):
        nn.Module.__init__(self)
        if len(members) < 2 or len({(m.dim_theta, m.dim_x) for m in members}) != 1:
            raise ValueError(f"need at least two members of equal dimensions, got {len(members)}")
        self.members = nn.ModuleList(members)
        first = members[0]
        self.name, self.dim_theta, self.dim_x = f"ensemble of {len(members)} surrogates", first.dim_theta, first.dim_x
        self.low, self.high, self.source_entropy = first.low, first.high, first.source_entropy

    def moments(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        r"""Mixture mean :math:`\bar m = \frac1K\sum_k m_k` ``(n, dim_x)`` and covariance
        :math:`\frac1K \sum_k \big(S_k S_k^\top + (m_k - \bar m)(m_k - \bar m)^\top\big)` ``(n, dim_x, dim_x)``."""
        means, covs = zip(*(m.moments(theta) for m in self.members))
        means, covs = torch.stack(means), torch.stack(covs)  # (K, n, dim_x), (K, n, dim_x, dim_x)
        gap = means - means.mean(0)  # (K, n, dim_x)
        return means.mean(0), (covs + gap[..., :, None] * gap[..., None, :]).mean(0)

    def simulate(self, theta: Tensor, generator: torch.Generator | None) -> Tensor:
        xs = torch.stack([m(theta, generator) for m in self.members])  # (K, n, dim_x)
        k = torch.randint(len(self.members), (len(theta),), generator=generator,
                          device=theta.device if generator is None else generator.device).to(theta.device)
        return xs[k, torch.arange(len(theta), device=theta.device)]  # (n, dim_x)


def fit_ensemble(simulator: Simulator, n_sims: int, n_members: int, generator: torch.Generator | None = None,
                 **kwargs) -> tuple[SurrogateEnsemble, list[FitResult]]:
    r"""Fit ``n_members`` surrogates by :func:`fit_surrogate`, each on its own ``n_sims`` simulations
    (:math:`\theta` uniform in the box), with its own initial weights (torch's global generator)
    and minibatches; ``kwargs`` go to :func:`fit_surrogate`. Returns the :class:`SurrogateEnsemble`
    (:eq:`eq-sur-ensemble`; ``n_members * n_sims`` simulations in all) and the fit results.
    """
    if n_members < 2:
        raise ValueError(f"an ensemble needs n_members >= 2, got {n_members}")
    members, results = zip(*(fit_surrogate(simulator, n_sims, generator, **kwargs) for _ in range(n_members)))
    return SurrogateEnsemble(list(members)), list(results)


def proposal_sample(source: BoxSampler, n: int, box_fraction: float,
                    generator: torch.Generator | None = None) -> Tensor:
    r"""``n`` parameters ``(n, d)`` from the next round's proposal, the source widened by the box:

    .. math:: \tilde p(\theta) = (1 - w)\, s(\theta) + w\, U(\theta;\, [l, h]),

    :math:`w` = ``box_fraction`` (:eq:`eq-sur-proposal`): the first :math:`\lfloor (1 - w) n \rceil`
    rows from the source, the rest uniform in its box, so the surrogate keeps seeing the whole box
    while its new simulations go where the source is. Drawn without gradients.
    """
    if not 0 <= box_fraction <= 1 or n < 1:
        raise ValueError(f"need 0 <= box_fraction <= 1 and n >= 1, got {box_fraction} and {n}")
    n_box = round(box_fraction * n)
    with torch.no_grad():
        from_source = source.sample(n - n_box, generator)  # (n - n_box, d)
        box = source.low + (source.high - source.low) * _random(torch.rand, (n_box, len(source.low)),
                                                                 source.low, generator)
    return torch.cat([from_source, box])


def refine_surrogate(surrogate: Surrogate, simulator: Simulator, theta: Tensor,
                     generator: torch.Generator | None = None, **fit_kwargs) -> FitResult:
    r"""One round of sequential fitting: simulate at ``theta`` ``(n, dim_theta)``, add the pairs to
    ``surrogate.pairs`` and train the surrogate further on all of them (:eq:`eq-sur-rounds`).

    The loss is :eq:`eq-sur-gauss` over every simulation so far, so new simulations sharpen the
    fit where they lie without the surrogate forgetting the rest of the box; training starts from
    the current weights and keeps the standardisation of the first round. Further arguments
    (``n_steps``, ``lr``, ...) go to :func:`minigen.train.fit`; the surrogate is frozen again
    afterwards. Returns the fit result; the surrogate is changed in place.
    """
    if theta.dim() != 2 or theta.shape[1] != surrogate.dim_theta:
        raise ValueError(f"theta must be (n, {surrogate.dim_theta}), got {tuple(theta.shape)}")
    new = _simulate_pairs(simulator, theta, generator)  # (n, dim_theta + dim_x)
    surrogate.pairs = torch.cat([surrogate.pairs, new.to(surrogate.pairs)])
    surrogate.requires_grad_(True)
    try:
        return fit(surrogate, surrogate.pairs, desc="surrogate round", generator=generator, **fit_kwargs)
    finally:
        surrogate.requires_grad_(False)
