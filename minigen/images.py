r"""Class-conditional generation of small images with classifier-free guidance (chapter 12).

A labelled data set is a tensor of *rows* ``(N, D + 1)``: the ``D`` pixels of an image, then its
label :math:`y \in \{0, \dots, K-1\}` as a float column (:meth:`minigen.data.Digits.rows`), so
:func:`minigen.train.fit` draws labelled minibatches like any other data. A model here is a
:class:`minigen.train.Model` of these rows: ``loss(rows)``, ``sample(n)`` returns rows (the label
column holds the label each image was generated for), ``log_prob(rows)`` the joint log density.

One network :math:`f_\theta(x, t, y)` serves both the conditional and the unconditional model: the
extra label :math:`y = \varnothing` (index ``K``) means "no label", and training replaces each
label by :math:`\varnothing` with probability ``p_uncond`` (:eq:`eq-img-dropout`). Sampling follows
the guided velocity (classifier-free guidance, :eq:`eq-img-cfg`)

.. math:: \tilde v(x, t \mid y) = (1 + w)\, v_\theta(x, t \mid y) - w\, v_\theta(x, t \mid \varnothing),

with :math:`w = 0` the plain conditional model. :class:`LabelledFlowMatching` regresses
:math:`v_\theta` on flow matching's velocity (:func:`minigen.flow_matching.cfm_loss`);
:class:`LabelledDiffusion` learns a noise prediction (:func:`minigen.diffusion.diffusion_loss`)
whose probability-flow velocity is affine in the score, so guiding the velocity is guiding the
score. Both integrate with an :class:`minigen.ode.Solver`. The classifier that measures them is
:class:`DigitClassifier`; the distances are in :mod:`minigen.metrics`.
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import diffusion, ode
from .flow_matching import LinearInterpolant, cfm_loss
from .networks import FourierFeatures, _random, mlp
from .train import Model, train

__all__ = [
    "LabelledMLP",
    "LabelledConvNet",
    "drop_labels",
    "guided",
    "LabelledModel",
    "LabelledFlowMatching",
    "LabelledDiffusion",
    "DigitClassifier",
    "fit_classifier",
]


def _condition(t: Tensor, y: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """``t`` as ``(B,)`` in ``x``'s dtype and ``y`` as ``(B,)`` int64 labels, checked against ``x``."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1)
    t = t.expand(x.shape[0]) if t.numel() == 1 else t
    if t.shape[0] != x.shape[0] or y.shape != (x.shape[0],):
        raise ValueError(f"x is {tuple(x.shape)}: t and y must be ({x.shape[0]},), got "
                         f"{tuple(t.shape)} and {tuple(y.shape)}")
    return t, y.long()


class LabelledMLP(nn.Module):
    r"""MLP :math:`f_\theta(x, t, y)` on :math:`[x, \gamma(t), e_y]`: pixels ``(B, dim)``, Fourier
    features of ``t`` ``(B,)`` and a learnt embedding of the label ``y`` ``(B,)`` (``n_classes``
    means "no label"). Returns ``(B, dim)``."""

    def __init__(self, dim: int = 64, n_classes: int = 10, hidden: int = 512, depth: int = 3,
                 n_freq: int = 8, max_freq: float = 8.0, embed_dim: int = 32):
        super().__init__()
        self.time = FourierFeatures(n_freq, max_freq)
        self.label = nn.Embedding(n_classes + 1, embed_dim)
        self.net = mlp(dim + 2 * n_freq + embed_dim, dim, hidden, depth)

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor) -> Tensor:
        r"""The field :math:`v(x, t \mid y)`: ``x`` ``(B, dim)``, ``t`` ``(B,)`` or a scalar, labels ``y`` ``(B,)``; ``(B, dim)``."""
        t, y = _condition(t, y, x)
        return self.net(torch.cat([x, self.time(t).to(x), self.label(y)], dim=1))  # (B, dim)


class LabelledConvNet(nn.Module):
    r"""Small residual convolutional network :math:`f_\theta(x, t, y)` for ``side x side`` images.

    Pixels ``(B, side**2)`` are reshaped to one channel; ``depth`` residual blocks of two 3x3
    convolutions with ``channels`` channels, each shifted and scaled (FiLM) by a vector computed
    from :math:`[\gamma(t), e_y]`. Returns ``(B, side**2)``.
    """

    def __init__(self, side: int = 8, n_classes: int = 10, channels: int = 32, depth: int = 2,
                 n_freq: int = 8, max_freq: float = 8.0, embed_dim: int = 32):
        super().__init__()
        self.side = side
        self.time = FourierFeatures(n_freq, max_freq)
        self.label = nn.Embedding(n_classes + 1, embed_dim)
        self.cond = mlp(2 * n_freq + embed_dim, 2 * channels * depth, channels * 2, 1)
        self.inp, self.out = nn.Conv2d(1, channels, 3, padding=1), nn.Conv2d(channels, 1, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
                                                  nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))
                                    for _ in range(depth))

    def forward(self, x: Tensor, t: Tensor | float, y: Tensor) -> Tensor:
        r"""The field :math:`v(x, t \mid y)` of 8x8 images: ``x`` ``(B, 64)``, ``t`` ``(B,)`` or a scalar, ``y`` ``(B,)``; ``(B, 64)``."""
        t, y = _condition(t, y, x)
        film = self.cond(torch.cat([self.time(t).to(x), self.label(y)], dim=1))  # (B, 2 C depth)
        h = self.inp(x.reshape(-1, 1, self.side, self.side))  # (B, C, side, side)
        film = film[:, :, None, None].chunk(2 * len(self.blocks), dim=1)  # (B, C, 1, 1) each
        for k, block in enumerate(self.blocks):
            h = h + block(h * (1 + film[2 * k]) + film[2 * k + 1])
        return self.out(F.silu(h)).reshape(x.shape)  # (B, side**2)


def drop_labels(y: Tensor, p_uncond: float, null: int,
                generator: torch.Generator | None = None) -> Tensor:
    r"""Labels ``y`` ``(B,)`` with each replaced by ``null`` (:math:`\varnothing`) with probability
    ``p_uncond`` (:eq:`eq-img-dropout`); the same network then learns both fields."""
    drop = _random(torch.rand, y.shape, torch.empty(0, device=y.device), generator) < p_uncond
    return torch.where(drop, torch.full_like(y, null), y)


def guided(field: Callable[[Tensor, Tensor, Tensor], Tensor], y: Tensor, w: float,
           null: int) -> Callable[[Tensor, Tensor], Tensor]:
    r"""The guided field :math:`(1 + w) f(x, t, y) - w f(x, t, \varnothing)` (:eq:`eq-img-cfg`) as a
    function of ``(x, t)``, for labels ``y`` ``(B,)``; ``w = 0`` is the conditional field itself.
    Both evaluations share one batch of ``2B`` rows."""
    if w == 0:
        return lambda x, t: field(x, t, y)

    def v(x: Tensor, t: Tensor) -> Tensor:
        both = field(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null)]))
        cond, uncond = both.chunk(2)  # (B, d) each
        return (1 + w) * cond - w * uncond
    return v


class LabelledModel(Model):
    r"""A labelled continuous-time model of rows ``(B, image_dim + 1)`` (pixels, then the label).

    Subclasses define ``velocity`` :math:`v_\theta(x, t \mid y)`, the base law (``_base``,
    ``_base_log_prob``) at time ``t_base`` and the data time ``t_data``. This class splits rows,
    samples with guidance (:func:`guided`) through ``solver``, and gives the joint density
    :math:`\log q(x, y) = \log q(x \mid y) - \log K` of its own sampler (labels uniform on the
    ``K`` classes when none are given; :eq:`eq-fm-log-density` for the pixels, at :math:`w = 0`).
    The exact divergence costs ``image_dim`` backward passes per evaluation; a solver with
    :func:`minigen.ode.divergence_hutchinson` costs one.
    """

    t_base: float
    t_data: float

    def __init__(self, image_dim: int, n_classes: int, net: nn.Module, p_uncond: float,
                 solver: ode.Solver, guidance: float, recipe: dict):
        super().__init__()
        if not 0 <= p_uncond < 1:
            raise ValueError(f"p_uncond must lie in [0, 1), got {p_uncond}")
        self.image_dim, self.n_classes, self.dim = image_dim, n_classes, image_dim + 1
        self.net, self.p_uncond, self.solver, self.guidance = net, p_uncond, solver, guidance
        self.recipe = recipe

    def split(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Pixels ``(B, image_dim)`` and int64 labels ``(B,)`` of rows ``(B, image_dim + 1)``."""
        rows = self._check_batch(rows, "rows")
        y = rows[:, -1].round().long()
        if (y < 0).any() or (y >= self.n_classes).any():
            raise ValueError(f"labels must lie in 0 .. {self.n_classes - 1}, got {y.min()} .. {y.max()}")
        return rows[:, :-1], y

    def velocity(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None, labels: Tensor | None = None,
               guidance: float | None = None, solver: ode.Solver | None = None) -> Tensor:
        """Rows ``(n, image_dim + 1)`` for ``labels`` ``(n,)`` (uniform random when ``None``) with
        guidance weight ``guidance`` (default ``self.guidance``) and ``solver`` (default ``self.solver``)."""
        like = self._like()
        if labels is None:
            labels = torch.randint(0, self.n_classes, (n,), generator=generator,
                                   device=generator.device if generator is not None else like.device)
        y = torch.as_tensor(labels, device=like.device).long()
        if y.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(y.shape)}")
        w = self.guidance if guidance is None else guidance
        field = guided(self.velocity, y, w, self.n_classes)
        x = (solver or self.solver).transport(field, self._base(n, like, generator), self.t_base,
                                              self.t_data)
        return torch.cat([x, y[:, None].to(x)], dim=1)

    def log_prob(self, rows: Tensor) -> Tensor:
        x, y = self.split(rows)
        log_q = self.solver.log_prob(lambda z, t: self.velocity(z, t, y), x, self._base_log_prob,
                                     t_data=self.t_data, t_base=self.t_base)  # (B,)
        return log_q - math.log(self.n_classes)


class LabelledFlowMatching(LabelledModel):
    r"""Class-conditional flow matching with classifier-free guidance on rows ``(B, image_dim + 1)``.

    ``loss(rows)``: :func:`minigen.flow_matching.cfm_loss` of the field
    :math:`v_\theta(\cdot, \cdot \mid \tilde y)` with :math:`\tilde y` the labels after
    :func:`drop_labels`, standard normal source at :math:`t = 0`, data at :math:`t = 1`
    (:eq:`eq-fm-loss`). ``net`` is a labelled network ``(x, t, y) -> (B, image_dim)``
    (:class:`LabelledMLP` by default).
    """

    t_base, t_data = 0.0, 1.0

    def __init__(self, image_dim: int = 64, n_classes: int = 10, net: nn.Module | None = None,
                 p_uncond: float = 0.1, interpolant: LinearInterpolant = LinearInterpolant(),
                 solver: ode.Solver = ode.Solver(n_steps=8), guidance: float = 0.0,
                 recipe: dict | None = None):
        super().__init__(image_dim, n_classes, net if net is not None else LabelledMLP(image_dim, n_classes),
                         p_uncond, solver, guidance,
                         dict(n_steps=2_000, batch_size=256, lr=2e-3, schedule="cosine", **(recipe or {})))
        self.interpolant = interpolant

    def velocity(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return self.net(x, t, y)

    def _base(self, n: int, like: Tensor, generator: torch.Generator | None) -> Tensor:
        return _random(torch.randn, (n, self.image_dim), like, generator)

    def _base_log_prob(self, x: Tensor) -> Tensor:
        return -0.5 * (x**2).sum(1) - 0.5 * self.image_dim * math.log(2 * math.pi)

    def loss(self, rows: Tensor) -> Tensor:
        x1, y = self.split(rows)
        y = drop_labels(y, self.p_uncond, self.n_classes)
        x0 = self._base(len(x1), x1, None)
        return cfm_loss(lambda x, t: self.net(x, t, y), x0, x1, self.interpolant)


class LabelledDiffusion(LabelledModel):
    r"""Class-conditional diffusion with classifier-free guidance on rows ``(B, image_dim + 1)``.

    The noise prediction is :class:`minigen.diffusion.ScoreNet`'s preconditioned form with a
    labelled network, :math:`\varepsilon_\theta(x, t \mid y) = \sigma_t c_t^2 x - \alpha_t
    \sigma_{\text{data}} c_t F_\theta(c_t x, t, y)` (:eq:`eq-diff-eps`); ``loss(rows)`` is
    :func:`minigen.diffusion.diffusion_loss` (:eq:`eq-diff-loss`) with dropped labels, and the
    sampler integrates the probability-flow ODE (:eq:`eq-diff-pf-ode`) from the prior at
    :math:`t = 1` to ``t_min``. ``sigma_data=None`` takes the pixels' standard deviation from the
    first training batch.
    """

    t_base = 1.0

    def __init__(self, image_dim: int = 64, n_classes: int = 10, net: nn.Module | None = None,
                 p_uncond: float = 0.1, sde: diffusion.SDE | None = None,
                 sigma_data: float | None = None, solver: ode.Solver = ode.Solver(n_steps=20),
                 t_min: float = 1e-3, guidance: float = 0.0, recipe: dict | None = None):
        super().__init__(image_dim, n_classes, net if net is not None else LabelledMLP(image_dim, n_classes),
                         p_uncond, solver, guidance,
                         dict(n_steps=3_000, batch_size=256, lr=2e-3, schedule="cosine", **(recipe or {})))
        self.sde = sde if sde is not None else diffusion.VESDE(sigma_min=0.01, sigma_max=50.0)
        self.t_data, self._scale_known = t_min, sigma_data is not None
        self.register_buffer("sigma_data", torch.tensor(float(sigma_data or 1.0)))

    def prepare(self, rows: Tensor) -> None:
        """Set ``sigma_data`` to the pixels' standard deviation in the first batch, unless given."""
        if not self._scale_known:
            self.sigma_data.fill_(float(self.split(rows)[0].std()))
            self._scale_known = True

    def eps(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """Noise prediction :math:`\\varepsilon_\\theta(x, t \\mid y)`, ``(B, image_dim)``."""
        a, s = self.sde.alpha(t)[:, None], self.sde.sigma(t)[:, None]
        c = (a**2 * self.sigma_data**2 + s**2).rsqrt()  # (B, 1)
        return s * c**2 * x - a * self.sigma_data * c * self.net(c * x, t, y)

    def _score(self, y: Tensor) -> SimpleNamespace:
        """The score network at labels ``y``, with the attributes :func:`diffusion.diffusion_loss` reads."""
        sde = self.sde
        return SimpleNamespace(sde=sde, eps=lambda x, t: self.eps(x, t, y),
                               loss_weight=lambda t: 1 + sde.sigma(t)**2 / (sde.alpha(t) * self.sigma_data)**2)

    def velocity(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        score = -self.eps(x, t, y) / self.sde.sigma(t)[:, None]  # (B, image_dim)
        return self.sde.drift(x, t) - 0.5 * self.sde.diffusion(t)[:, None] ** 2 * score

    def _base(self, n: int, like: Tensor, generator: torch.Generator | None) -> Tensor:
        return self.sde.prior_sample(n, self.image_dim, generator, dtype=like.dtype, device=like.device)

    def _base_log_prob(self, x: Tensor) -> Tensor:
        return self.sde.prior_log_prob(x)

    def loss(self, rows: Tensor) -> Tensor:
        x0, y = self.split(rows)
        y = drop_labels(y, self.p_uncond, self.n_classes)
        return diffusion.diffusion_loss(self._score(y), x0, self.t_data)


class DigitClassifier(nn.Module):
    r"""Classifier of images ``(B, dim)`` into ``n_classes``: an MLP whose last hidden layer, of
    ``feature_dim`` units, is the feature space of the Fréchet distance (:eq:`eq-img-frechet`).

    ``features(x)`` ``(B, feature_dim)``; ``forward(x)`` the logits ``(B, n_classes)``;
    ``predict(x)`` the labels ``(B,)``.
    """

    def __init__(self, dim: int = 64, n_classes: int = 10, hidden: int = 256, feature_dim: int = 32):
        super().__init__()
        self.body = nn.Sequential(mlp(dim, feature_dim, hidden, 1), nn.SiLU())
        self.head = nn.Linear(feature_dim, n_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(B, 10)`` of images ``x`` ``(B, 64)``."""
        return self.head(self.body(x))

    def predict(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self(x).argmax(1)


def fit_classifier(x: Tensor, y: Tensor, n_steps: int = 1_000, batch_size: int = 128,
                   lr: float = 2e-3, noise: float = 0.3, weight_decay: float = 1e-4,
                   generator: torch.Generator | None = None, **kwargs) -> DigitClassifier:
    r"""Train a :class:`DigitClassifier` on images ``x`` ``(N, dim)`` with labels ``y`` ``(N,)``.

    Cross-entropy with AdamW, cosine schedule; each minibatch gets Gaussian pixel noise of standard
    deviation ``noise`` (so the classifier does not hinge on exact pixel values that a generator
    reproduces only approximately). Extra keyword arguments go to the classifier.
    """
    net = DigitClassifier(x.shape[1], int(y.max()) + 1, **kwargs).to(x)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, n_steps)

    def batches(step: int) -> Tensor:
        i = torch.randint(0, len(x), (batch_size,), generator=generator).to(x.device)
        return x[i] + noise * _random(torch.randn, (batch_size, x.shape[1]), x, generator), y[i]

    train(net, lambda m, b: F.cross_entropy(m(b[0]), b[1]), opt, batches, n_steps,
          scheduler=sched, desc="classifier")
    return net
