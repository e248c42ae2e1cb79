r"""Generative adversarial networks: the minimax game, Wasserstein critics and their penalties.

A discriminator returns a *logit* :math:`\ell(x)`, with :math:`D(x) = \sigma(\ell(x))`. Its loss
(minimised) is the binary cross-entropy of telling data :math:`x \sim p` from samples
:math:`\tilde x = G(z) \sim q_\theta`,

.. math:: L_D = -\E_p \log D(x) - \E_{q_\theta} \log (1 - D(\tilde x)),

whose minimiser :math:`D^* = p / (p + q_\theta)` makes the logit the log density ratio
:math:`\ell^* = \log p - \log q_\theta` (:eq:`eq-gan-optimal-d`). A Wasserstein critic
:math:`f` maximises :math:`\E_p f - \E_{q_\theta} f` over 1-Lipschitz functions
(:eq:`eq-gan-kr-duality`); the constraint is imposed softly by a gradient penalty.

Every loss here is *minimised* and is a pure function of ``(network, real, fake)``; the steps
:func:`critic_step` and :func:`generator_step` update one player's parameters only. :class:`GAN`
holds both players and :func:`minigen.train.fit` trains it, alternating the same two steps.

Batches are checked: ``real`` and ``fake`` must be ``(B, d)`` with the same ``d`` (a 1D sample is
``x[:, None]``) and the same dtype (tensors that combine must share a dtype, else ``ValueError``
naming both; nothing is converted silently).
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .networks import _batch, _random, _same_dtype, mlp
from .train import Model

__all__ = [
    "discriminator_loss",
    "generator_loss_nonsaturating",
    "generator_loss_minimax",
    "log_ratio",
    "critic_loss",
    "generator_loss_wgan",
    "gradient_penalty",
    "r1_penalty",
    "r2_penalty",
    "wgan_r1_r2_loss",
    "critic_step",
    "generator_step",
    "averaged",
    "mode_masses",
    "GAN",
]

Critic = Callable[[Tensor], Tensor]


def _out(f: Critic, x: Tensor) -> Tensor:
    """Evaluate a discriminator or critic and return ``(B,)``."""
    y = f(x)
    if y.dim() == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"the critic must return (B,) or (B, 1) for x of shape {tuple(x.shape)}, "
                         f"got {tuple(y.shape)}")
    return y


def _real_fake(real: Tensor, fake: Tensor) -> None:
    """``real`` ``(B, d)`` and ``fake`` ``(B', d)``: the same dimension and dtype."""
    _batch(real, "real"), _batch(fake, "fake")
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"real and fake must have the same dimension d, got real {tuple(real.shape)} "
                         f"and fake {tuple(fake.shape)}")
    _same_dtype(real=real, fake=fake)


def discriminator_loss(disc: Critic, real: Tensor, fake: Tensor) -> Tensor:
    r"""Cross-entropy :math:`-\E_p \log D - \E_q \log(1 - D)` of :eq:`eq-gan-minimax`.

    With logits :math:`\ell`: :math:`\E_p \operatorname{softplus}(-\ell) + \E_q
    \operatorname{softplus}(\ell)`. ``real`` ``(B, d)``, ``fake`` ``(B', d)``; returns a 0-d tensor.
    """
    _real_fake(real, fake)
    return F.softplus(-_out(disc, real)).mean() + F.softplus(_out(disc, fake)).mean()


def generator_loss_nonsaturating(disc: Critic, fake: Tensor) -> Tensor:
    r"""Non-saturating generator loss :math:`-\E_q \log D(\tilde x)` (:eq:`eq-gan-nonsaturating`); ``fake`` ``(B, d)``."""
    _batch(fake, "fake")
    return F.softplus(-_out(disc, fake)).mean()


def generator_loss_minimax(disc: Critic, fake: Tensor) -> Tensor:
    r"""Minimax (saturating) generator loss :math:`\E_q \log(1 - D(\tilde x))` of :eq:`eq-gan-minimax`; ``fake`` ``(B, d)``."""
    _batch(fake, "fake")
    return -F.softplus(_out(disc, fake)).mean()


def log_ratio(disc: Critic, x: Tensor) -> Tensor:
    r"""Density ratio read off a discriminator: :math:`\log \frac{D}{1 - D} = \ell(x) \approx \log \frac{p}{q}`.

    Exact at the optimal discriminator :eq:`eq-gan-optimal-d`; ``x`` ``(B, d)``, returns ``(B,)``.
    """
    return _out(disc, x)


def critic_loss(critic: Critic, real: Tensor, fake: Tensor) -> Tensor:
    r"""Wasserstein critic loss :math:`\E_q f(\tilde x) - \E_p f(x)`, minus the dual objective of :eq:`eq-gan-kr-duality`.

    ``real`` ``(B, d)``, ``fake`` ``(B', d)``; returns a 0-d tensor.
    """
    _real_fake(real, fake)
    return _out(critic, fake).mean() - _out(critic, real).mean()


def generator_loss_wgan(critic: Critic, fake: Tensor) -> Tensor:
    r"""WGAN generator loss :math:`-\E_q f(G(z))` (:eq:`eq-gan-wgan-generator`); ``fake`` ``(B, d)``."""
    _batch(fake, "fake")
    return -_out(critic, fake).mean()


def _grad_norm2(critic: Critic, x: Tensor) -> Tensor:
    """Squared norm of the critic's input gradient at each row, ``(B,)``, differentiable."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(_out(critic, x).sum(), x, create_graph=True)
    return (grad**2).sum(1)


def gradient_penalty(critic: Critic, real: Tensor, fake: Tensor,
                     generator: torch.Generator | None = None) -> Tensor:
    r"""WGAN-GP penalty :math:`\E_{\hat x} (\lVert \nabla f(\hat x) \rVert - 1)^2` (:eq:`eq-gan-gp`).

    :math:`\hat x = u x + (1 - u) \tilde x` with :math:`u \sim U(0, 1)` per pair; ``real`` and
    ``fake`` ``(B, d)`` with equal ``B``. Returns a 0-d tensor. :math:`u` is drawn in ``real``'s
    dtype on its device.
    """
    _real_fake(real, fake)
    if real.shape != fake.shape:
        raise ValueError(f"real and fake must have the same shape, got {tuple(real.shape)} "
                         f"and {tuple(fake.shape)}")
    u = _random(torch.rand, (real.shape[0], 1), real, generator)
    x_hat = u * real.detach() + (1 - u) * fake.detach()  # (B, d)
    return ((_grad_norm2(critic, x_hat) + 1e-12).sqrt() - 1).pow(2).mean()


def r1_penalty(critic: Critic, real: Tensor) -> Tensor:
    r"""R1 penalty :math:`\E_p \lVert \nabla f(x) \rVert^2` on the data (:eq:`eq-gan-r1`); ``(B, d)`` -> 0-d."""
    _batch(real, "real")
    return _grad_norm2(critic, real).mean()


def r2_penalty(critic: Critic, fake: Tensor) -> Tensor:
    r"""R2 penalty :math:`\E_q \lVert \nabla f(\tilde x) \rVert^2` on the model's samples (:eq:`eq-gan-r1`); ``(B, d)`` -> 0-d."""
    _batch(fake, "fake")
    return _grad_norm2(critic, fake).mean()


def wgan_r1_r2_loss(critic: Critic, real: Tensor, fake: Tensor, gamma: float) -> Tensor:
    r"""Critic loss with both penalties, :math:`\E_q f - \E_p f + \tfrac\gamma2 (R_1 + R_2)` (:eq:`eq-gan-r1`).

    The same value as ``critic_loss + gamma / 2 * (r1_penalty + r2_penalty)``, computed with one
    forward and one double-backward pass over the concatenated batch (half the cost for small
    networks). ``real`` ``(B, d)``, ``fake`` ``(B', d)``, ``gamma >= 0``; returns a 0-d tensor.
    """
    _real_fake(real, fake)
    if not gamma >= 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    x = torch.cat([real.detach(), fake.detach()]).requires_grad_(True)  # (B + B', d)
    f = _out(critic, x)
    (grad,) = torch.autograd.grad(f.sum(), x, create_graph=True)
    norm2 = (grad**2).sum(1)  # (B + B',)
    n = real.shape[0]
    return (f[n:].mean() - f[:n].mean()
            + 0.5 * gamma * (norm2[:n].mean() + norm2[n:].mean()))


def critic_step(critic: nn.Module, optimizer: torch.optim.Optimizer,
                loss_fn: Callable[[nn.Module, Tensor, Tensor], Tensor], real: Tensor,
                fake: Tensor) -> float:
    """One optimizer step on ``loss_fn(critic, real, fake)``; ``fake`` is detached, so only the critic moves.

    ``loss_fn`` may add a penalty, e.g. ``lambda f, x, y: critic_loss(f, x, y) + 10 * gradient_penalty(f, x, y)``.
    Returns the loss value.
    """
    loss = loss_fn(critic, real, fake.detach())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def generator_step(generator: nn.Module, critic: nn.Module, optimizer: torch.optim.Optimizer,
                   loss_fn: Callable[[nn.Module, Tensor], Tensor], z: Tensor) -> float:
    """One optimizer step on ``loss_fn(critic, generator(z))``; gradients reach the generator only.

    ``z`` ``(B, latent_dim)``. The critic's ``.grad`` fields are left untouched. Returns the loss.
    """
    loss = loss_fn(critic, generator(z))
    optimizer.zero_grad(set_to_none=True)
    loss.backward(inputs=[p for p in generator.parameters() if p.requires_grad])
    optimizer.step()
    return loss.item()


def averaged(generator: nn.Module, decay: float = 0.99) -> AveragedModel:
    r"""An exponential moving average of ``generator``'s weights (:eq:`eq-gan-ema`).

    :math:`\bar\theta_k = \beta \bar\theta_{k-1} + (1 - \beta)\, \theta_k` with
    :math:`\beta` = ``decay``, started at the first update (so the random initial weights carry
    no weight). :class:`GAN` keeps one (its ``ema``) and updates it after every training step;
    call it like the generator. A ``torch.optim.swa_utils.AveragedModel``; its ``module`` holds
    the averaged network.
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay}")
    return AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def mode_masses(x: Tensor, means: Tensor, radius: float | None = None) -> Tensor:
    r"""Fraction of the samples ``x`` ``(n, d)`` that fall on each mode ``means`` ``(K, d)``; ``(K,)``.

    Each sample counts for its nearest mode. With ``radius=None`` every sample counts (the masses
    of the Voronoi cells, summing to 1: the balance between modes); with a ``radius`` only the
    samples within it do, and the masses sum to less than 1 (the rest fell between modes). For a
    mixture with equal weights a good sampler gives masses near :math:`1/K`; a dropped mode shows
    as a zero.
    """
    if x.dim() != 2 or means.dim() != 2 or x.shape[1] != means.shape[1]:
        raise ValueError(f"x must be (n, d) and means (K, d); got {tuple(x.shape)}, {tuple(means.shape)}")
    dist = torch.cdist(x.double(), means.double())  # (n, K)
    nearest, k = dist.min(1)
    hit = nearest <= radius if radius is not None else torch.ones_like(nearest, dtype=torch.bool)
    return torch.bincount(k[hit], minlength=means.shape[0]).double() / x.shape[0]


class GAN(Model):
    r"""A generator and a critic (or discriminator) trained in alternation, a :class:`minigen.train.Model`.

    Each step of :func:`minigen.train.fit` takes ``n_critic`` critic steps on
    ``critic_loss(critic, real, fake)``, each on a fresh data batch, then one generator step on
    ``generator_loss(critic, G(z))``, each player with its own Adam. With ``ema`` the samples come
    from the exponential moving average of the generator's weights (:eq:`eq-gan-ema`). The
    defaults are chapter 5's WGAN with R1 + R2 penalties (weight 5, :eq:`eq-gan-r1`): MLPs with 2
    hidden layers of 64 units, 2 critic steps per generator step, learning rates
    :math:`10^{-3}` (generator) and :math:`2\cdot10^{-3}` (critic), betas (0.5, 0.9). For the
    vanilla GAN pass ``critic_loss=discriminator_loss``,
    ``generator_loss=generator_loss_nonsaturating``, ``n_critic=1``, ``ema=None``.

    ``loss(real)`` is the critic's loss on a data batch against fresh samples; a GAN has no
    density (``log_prob`` raises).
    """

    def __init__(self, dim: int, latent_dim: int | None = None, hidden: int = 64, depth: int = 2,
                 generator_net: nn.Module | None = None, critic: nn.Module | None = None,
                 critic_loss: Callable[[nn.Module, Tensor, Tensor], Tensor] | None = None,
                 generator_loss: Callable[[nn.Module, Tensor], Tensor] = generator_loss_wgan,
                 n_critic: int = 2, ema: float | None = 0.99, recipe: dict | None = None):
        super().__init__()
        if n_critic < 1:
            raise ValueError(f"n_critic must be >= 1, got {n_critic}")
        self.dim, self.latent_dim = dim, latent_dim or dim
        self.generator_net = generator_net if generator_net is not None else mlp(self.latent_dim, dim, hidden, depth)
        self.critic = critic if critic is not None else mlp(dim, 1, hidden, depth)
        self.critic_loss = critic_loss or partial(wgan_r1_r2_loss, gamma=5.0)
        self.generator_loss, self.n_critic = generator_loss, n_critic
        self.average = averaged(self.generator_net, ema) if ema is not None else None
        if self.average is not None:
            self.average.requires_grad_(False)
        self.recipe = {**dict(n_steps=2_000, batch_size=256, lr={"generator": 1e-3, "critic": 2e-3},
                              betas=(0.5, 0.9), schedule="constant"), **(recipe or {})}

    def players(self) -> dict[str, list[nn.Parameter]]:
        return {"critic": list(self.critic.parameters()),
                "generator": list(self.generator_net.parameters())}

    def _fake(self, n: int, net: nn.Module | None = None) -> Tensor:
        return (net or self.generator_net)(_random(torch.randn, (n, self.latent_dim), self._like()))

    def training_losses(self, next_batch: Callable[[], Tensor]):
        for _ in range(self.n_critic):
            real = self._check_batch(next_batch(), "real")
            with torch.no_grad():  # the critic step needs no graph through the generator
                fake = self._fake(len(real))
            yield "critic", self.critic_loss(self.critic, real, fake)
        yield "generator", self.generator_loss(self.critic, self._fake(len(real)))

    def after_step(self) -> None:
        if self.average is not None:
            self.average.update_parameters(self.generator_net)

    def loss(self, real: Tensor) -> Tensor:
        real = self._check_batch(real, "real")
        with torch.no_grad():
            fake = self._fake(len(real))
        return self.critic_loss(self.critic, real, fake)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        net = self.average.module if self.average is not None and self.average.n_averaged > 0 \
            else self.generator_net
        return net(_random(torch.randn, (n, self.latent_dim), self._like(), generator))
