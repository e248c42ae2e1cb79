r"""Distances between a model's samples and the truth, and the noise-floor ratio.

The book's quality figure is the *noise-floor ratio* (book chapter 3, "Measured against the truth")

.. math:: \rho = \frac{\mathbb E\, D(\hat x_n, y_n)}{\mathbb E\, D(y_n, y'_n)},

a distance :math:`D` between ``n`` model samples :math:`\hat x_n` and ``n`` exact samples
:math:`y_n`, divided by the distance between two independent exact samples of the same size.
:math:`\rho = 1` means indistinguishable from the truth at that size. :func:`noise_floor_ratio`
estimates both expectations and returns the ratio with its standard error (a :class:`Ratio`).
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from . import runtime
from .mmd import mmd2
from .train import Model

__all__ = [
    "Sampler",
    "Ratio",
    "wasserstein1_1d",
    "ks_1d",
    "sliced_wasserstein",
    "sort_columns",
    "mmd2",
    "c2st",
    "noise_floor_ratio",
    "frechet_distance_gaussian",
    "frechet_distance",
    "conditional_accuracy",
    "nearest_distances",
    "Memorisation",
    "memorisation",
]


class Sampler(Protocol):
    """A target with exact samples: ``dim`` and ``sample(n, generator, dtype) -> (n, dim)``.

    The same generator state must give the same sample. :func:`noise_floor_ratio` needs only this;
    when a 1D target also has a ``cdf(t) -> (m,)`` method (as :class:`minigen.data.GaussianMixture`
    does), it uses it to compute the noise floor exactly.
    """

    dim: int

    def sample(self, n: int, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32) -> Tensor: ...


def _check_finite(x: Tensor, name: str) -> Tensor:
    """Raise a ValueError naming ``name`` if ``x`` is empty or holds NaN or inf; return ``x``."""
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    bad = ~torch.isfinite(x)
    if bad.any():
        raise ValueError(f"{name} holds {int(bad.sum())} non-finite values (NaN or inf)")
    return x


def _as_1d(x: Tensor, name: str) -> Tensor:
    if x.dim() == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1D, of shape (n,) or (n, 1); got {tuple(x.shape)}")
    return _check_finite(x, name)


def _ecdf(sorted_x: Tensor, t: Tensor) -> Tensor:
    return torch.searchsorted(sorted_x, t, right=True).to(t.dtype) / sorted_x.numel()


def _cdf_grid(sorted_x: Tensor, cdf: Callable[[Tensor], Tensor], size: int) -> Tensor:
    """``size`` even points ``(size,)`` on ``sorted_x``'s device and dtype, from ``[x_min, x_max]``
    widened until the CDF's mass outside is below 1e-12 on each side."""
    lo, hi = float(sorted_x[0]), float(sorted_x[-1])
    pad = max(hi - lo, 1.0)
    for _ in range(60):  # widen until the CDF's tails outside [lo, hi] are negligible
        tails = cdf(torch.tensor([lo, hi], dtype=sorted_x.dtype, device=sorted_x.device))
        if tails[0] < 1e-12 and tails[1] > 1 - 1e-12:
            break
        lo, hi = lo - pad * float(tails[0] >= 1e-12), hi + pad * float(tails[1] <= 1 - 1e-12)
    return torch.linspace(lo, hi, size, dtype=sorted_x.dtype, device=sorted_x.device)


def _cdf_gap(x: Tensor, y: Tensor | Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """Breakpoints ``t`` and ``|F_x - G|`` on them (exact for samples, a fine grid for a CDF)."""
    x = _as_1d(x, "x").double().sort().values
    if callable(y) and not isinstance(y, Tensor):
        t = torch.cat([_cdf_grid(x, y, 200_001), x]).sort().values
        return t, (_ecdf(x, t) - y(t)).abs()
    y = _as_1d(y, "y").double().sort().values.to(x.device)
    t = torch.cat([x, y]).sort().values
    return t, (_ecdf(x, t) - _ecdf(y, t)).abs()


def wasserstein1_1d(x: Tensor, y: Tensor | Callable[[Tensor], Tensor]) -> float:
    r""":math:`W_1 = \int |F_x(t) - G(t)|\,dt` between a 1D sample ``x`` ``(n,)`` and a sample or a CDF.

    ``y`` is a second sample ``(m,)`` (exact, any size) or a CDF ``G`` (integrated on a fine grid).
    """
    t, gap = _cdf_gap(x, y)
    if callable(y) and not isinstance(y, Tensor):
        return float(torch.trapezoid(gap, t))
    return float((gap[:-1] * t.diff()).sum())  # the ECDF gap is constant between breakpoints


def ks_1d(x: Tensor, y: Tensor | Callable[[Tensor], Tensor]) -> float:
    r"""Kolmogorov-Smirnov statistic :math:`\sup_t |F_x(t) - G(t)|` against a sample or a CDF."""
    t, gap = _cdf_gap(x, y)
    if callable(y) and not isinstance(y, Tensor):  # the ECDF jumps at x: check left limits too
        xs = _as_1d(x, "x").double().sort().values
        left = (torch.arange(xs.numel(), dtype=torch.float64, device=xs.device) / xs.numel() - y(xs)).abs()
        return float(torch.maximum(gap.max(), left.max()))
    return float(gap.max())


def sort_columns(x: Tensor) -> Tensor:
    """Each column of ``x`` ``(n, L)`` sorted ascending, differentiable like ``x.sort(dim=0).values``.

    On the CPU the order comes from NumPy, whose row sort is faster than ``torch.sort`` for the
    tall shapes of the sliced distances (timings in ``benchmarks/``); with a gradient,
    the values are then gathered from ``x``, so autograd sees the same permutation. Elsewhere it is
    ``torch.sort``.
    """
    if x.device.type != "cpu" or x.dim() != 2:
        return x.sort(dim=0).values
    a = np.ascontiguousarray(x.detach().numpy().T)  # (L, n): NumPy sorts contiguous rows fastest
    if not x.requires_grad:
        return torch.from_numpy(np.sort(a, axis=1)).T
    order = torch.from_numpy(np.argsort(a, axis=1))  # (L, n)
    return x.T.gather(1, order).T


def _quantiles(sorted_x: Tensor, n: int) -> Tensor:
    """Empirical quantiles at levels (i + 1/2)/n of sorted columns ``(m, L) -> (n, L)``."""
    m = sorted_x.shape[0]
    if m == n:
        return sorted_x
    idx = ((torch.arange(n, device=sorted_x.device) + 0.5) * m / n).long().clamp(max=m - 1)
    return sorted_x[idx]


def sliced_wasserstein(x: Tensor, y: Tensor, n_projections: int = 500, p: int = 2,
                       generator: torch.Generator | None = None) -> Tensor:
    r"""Sliced Wasserstein :math:`SW_p = (\mathbb E_\theta W_p^p(\theta^\top x, \theta^\top y))^{1/p}`.

    ``x`` ``(n, d)`` and ``y`` ``(m, d)``, ``d >= 2``; directions :math:`\theta` uniform on the
    sphere. Differentiable in ``x`` and ``y``. Returns a 0-d tensor.
    """
    if x.dim() != 2 or y.dim() != 2:
        raise ValueError(f"x and y must be 2D (n, d); got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    if x.shape[1] < 2:
        raise ValueError("sliced_wasserstein needs d >= 2; use wasserstein1_1d in 1D")
    _check_finite(x, "x"), _check_finite(y, "y")
    if n_projections < 1:
        raise ValueError(f"n_projections must be >= 1, got {n_projections}")
    theta = torch.randn(x.shape[1], n_projections, generator=generator, dtype=x.dtype)
    theta = (theta / theta.norm(dim=0, keepdim=True)).to(x.device)  # (d, L), drawn on the generator's device
    px = sort_columns(x @ theta)  # (n, L)
    py = sort_columns(y.to(x) @ theta)  # (m, L)
    n = max(px.shape[0], py.shape[0])
    gap = (_quantiles(px, n) - _quantiles(py, n)).abs().pow(p)
    return gap.mean().pow(1 / p)


def _fit_classifier(x: Tensor, c: Tensor, x_val: Tensor, c_val: Tensor, hidden: int, epochs: int,
                    seed: int, every: int = 5, patience: int = 6) -> torch.nn.Module:
    """Full-batch Adam on the logistic loss; keeps the weights of the lowest validation loss and
    stops after ``patience`` checks (one every ``every`` epochs) without improvement."""
    from .networks import mlp

    bce = torch.nn.functional.binary_cross_entropy_with_logits
    with torch.random.fork_rng(devices=[]):  # the same initial weights for a seed, on any device
        torch.manual_seed(seed)
        net = mlp(x.shape[1], 1, hidden, depth=2, activation=torch.nn.ReLU).to(x.device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    best, best_state, waited = math.inf, None, 0
    for epoch in range(epochs + 1):
        if epoch % every == 0 or epoch == epochs:
            with torch.no_grad():
                val = float(bce(net(x_val)[:, 0], c_val))
            if val < best - 1e-4:
                best, waited = val, 0
                best_state = {k: v.clone() for k, v in net.state_dict().items()}
            elif (waited := waited + 1) >= patience:
                break
        if epoch == epochs:
            break
        with torch.enable_grad():  # trains even when called under no_grad
            loss = bce(net(x)[:, 0], c)
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.load_state_dict(best_state)
    return net


def c2st(x: Tensor, y: Tensor, n_folds: int = 5, hidden: int = 64, epochs: int = 300,
         seed: int | None = None) -> float:
    r"""Classifier two-sample test: balanced held-out accuracy of an MLP telling ``x`` from ``y``.

    .. math:: \mathrm{acc} = \tfrac12\big(\Pr(\hat c(x) = 0) + \Pr(\hat c(y) = 1)\big),

    0.5 when the classifier cannot tell them apart; for two laws it cannot exceed the Bayes
    accuracy :math:`\tfrac12 + \tfrac12\mathrm{TV}` (e.g. :math:`\Phi(d/2)` for
    :math:`\mathcal N(0, 1)` against :math:`\mathcal N(d, 1)`). ``x`` ``(n, d)`` and ``y``
    ``(m, d)`` (or ``(n,)``, ``(m,)``): the larger sample is subsampled to the smaller size,
    both are z-scored with their pooled statistics, and equal points share a fold, so a held-out
    point's copy is never in training. In each of ``n_folds`` folds a ReLU MLP (two hidden layers
    of ``hidden``) is trained for at most ``epochs`` full-batch Adam steps, stopped early on the
    loss of a validation fifth of the training points. Computes in float32 on ``x``'s device.
    ``seed`` seeds the subsampling, the folds and the classifiers; by default it is the run's
    stream 0 (:func:`minigen.runtime.seed`), so it moves with the book seed (``MINIGEN_SEED``).
    """
    x, y = (v[:, None] if v.dim() == 1 else v for v in (x, y))
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be (n, d) with equal d; got {tuple(x.shape)}, {tuple(y.shape)}")
    _check_finite(x, "x"), _check_finite(y, "y")
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    m = min(len(x), len(y))
    if m < n_folds:
        raise ValueError(f"c2st needs at least n_folds = {n_folds} points in each sample, got "
                         f"{len(x)} and {len(y)}")
    seed = runtime.seed(0) if seed is None else seed
    g, device = torch.Generator().manual_seed(seed), x.device
    x = x[torch.randperm(len(x), generator=g)[:m].to(device)]  # (m, d): balanced classes
    y = y.to(device)[torch.randperm(len(y), generator=g)[:m].to(device)]  # (m, d)
    data = torch.cat([x, y]).float()  # (2m, d)
    data = (data - data.mean(0)) / data.std(0).clamp_min(1e-12)
    label = torch.cat([torch.zeros(m), torch.ones(m)]).to(device)  # (2m,)
    _, group = torch.unique(data, dim=0, return_inverse=True)  # equal points, one group
    n_groups = int(group.max()) + 1
    fold = (torch.randperm(n_groups, generator=g) % n_folds).to(device)[group]  # (2m,)
    val = (torch.rand(n_groups, generator=g) < 0.2).to(device)[group]  # (2m,)
    correct = torch.zeros(2 * m, dtype=torch.bool, device=device)
    for k in range(n_folds):
        test, train = fold == k, (fold != k) & ~val
        held = (fold != k) & val
        if not train.any() or not held.any():
            train = held = fold != k  # too few groups to split: no early stopping
        net = _fit_classifier(data[train], label[train], data[held], label[held], hidden, epochs,
                              seed + k)
        with torch.no_grad():
            correct[test] = (net(data[test])[:, 0] > 0) == label[test].bool()
    return float(0.5 * (correct[:m].float().mean() + correct[m:].float().mean()))


class Ratio(float):
    """A noise-floor ratio: a ``float`` that carries its standard error ``se`` and ``n_repeats``.

    It compares and formats as the float (``rho <= 1.3``, ``f"{rho:.2f}"``); ``repr`` and
    ``str`` read ``1.04 ± 0.02``. Arithmetic returns plain floats.
    """

    se: float
    n_repeats: int

    def __new__(cls, value: float, se: float = math.nan, n_repeats: int = 0) -> "Ratio":
        ratio = super().__new__(cls, value)
        ratio.se, ratio.n_repeats = float(se), int(n_repeats)
        return ratio

    def __repr__(self) -> str:
        return f"{float(self):.2f} ± {self.se:.2f}"


def _binomial_mad(i: np.ndarray, n: int, p: np.ndarray | float) -> np.ndarray:
    r""":math:`\mathbb E|i/n - K/n|` for :math:`K \sim \mathrm{Bin}(n, p)` and integers ``0 <= i <= n``.

    With :math:`c = i/n` and :math:`k\binom nk p^k q^{n-k} = np\binom{n-1}{k-1}p^{k-1}q^{n-k}`:
    :math:`\mathbb E|c - K/n| = p - c + 2\,(c\,P(K \le i) - p\,P(K' \le i - 1))`,
    :math:`K' \sim \mathrm{Bin}(n - 1, p)`.
    """
    from scipy.special import bdtr

    c = i / n
    below = bdtr(i, n, p)  # P(K <= i)
    below1 = np.where(i >= 1, bdtr(np.maximum(i - 1, 0), max(n - 1, 0), p), 0.0)
    return p - c + 2 * (c * below - p * below1)


def _expected_w1_to_exact(x: Tensor, cdf: Callable[[Tensor], Tensor], grid: Tensor) -> float:
    r""":math:`\mathbb E_y W_1(x, y)` over exact samples ``y`` of the size ``n`` of ``x`` ``(n,)``.

    :math:`\int \mathbb E|F_x(t) - K_t/n|\,dt` with :math:`K_t \sim \mathrm{Bin}(n, F(t))`, on the
    merged breakpoints of ``grid`` and ``x`` (``F_x`` constant, ``F`` trapezoidal between them).
    """
    xs = x.double().sort().values
    t = torch.cat([grid.to(xs), xs]).sort().values  # (G + n,)
    i = torch.searchsorted(xs, t[:-1], right=True).cpu().numpy()  # n F_x on [t_j, t_j+1)
    p = cdf(t).clamp(0, 1).cpu().numpy()
    h = _binomial_mad(i, len(xs), p[:-1]) + _binomial_mad(i, len(xs), p[1:])
    return float((h * t.diff().cpu().numpy()).sum() / 2)


def _expected_w1_between_exact(cdf: Callable[[Tensor], Tensor], n: int, grid: Tensor) -> float:
    r"""The noise floor :math:`\mathbb E W_1(y, y') = \int \mathbb E|K_t - K'_t|/n\,dt` of two exact
    samples of size ``n``, :math:`K_t, K'_t \sim \mathrm{Bin}(n, F(t))` independent, on ``grid``."""
    from scipy.special import gammaln

    p = cdf(grid).clamp(0, 1).cpu().numpy()
    mad = np.zeros_like(p)
    for j, pj in enumerate(p):
        if 1e-15 < pj < 1 - 1e-15:
            s = 12 * math.sqrt(n * pj * (1 - pj)) + 2
            k = np.arange(max(0, math.floor(n * pj - s)), min(n, math.ceil(n * pj + s)) + 1)
            log_pmf = (gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1) + k * math.log(pj)
                       + (n - k) * math.log1p(-pj))
            mad[j] = (np.exp(log_pmf) * _binomial_mad(k, n, pj)).sum()
    return float(np.trapezoid(mad, grid.cpu().numpy()))


def _default_distance(x: Tensor, y: Tensor) -> float:
    if x.dim() == 1 or x.shape[1] == 1:
        return wasserstein1_1d(x, y)
    return float(sliced_wasserstein(x.double(), y.double(), n_projections=200,
                                    generator=torch.Generator().manual_seed(0)))


SE_TARGET, PILOT_REPEATS, MIN_REPEATS, MAX_REPEATS, MAX_POINTS_PER_CALL = 0.03, 25, 64, 400, 200_000


def _model_samples(x: Tensor | Callable[[int, torch.Generator], Tensor], n: int, k: int, dim: int,
                   g: torch.Generator) -> list[Tensor]:
    """``k`` model samples ``(n, dim)`` in float64 on the CPU: the fixed sample ``k`` times, or
    draws of the sampler, up to ``MAX_POINTS_PER_CALL`` points per call split into samples of ``n``."""
    if isinstance(x, Tensor):
        return [x] * k
    out: list[Tensor] = []
    while len(out) < k:
        j = min(k - len(out), max(1, MAX_POINTS_PER_CALL // n))
        xs = x(j * n, g)
        xs = xs[:, None] if xs.dim() == 1 else xs
        if xs.shape != (j * n, dim):
            raise ValueError(f"model samples must have shape ({j * n}, {dim}) to match the target "
                             f"({j} repeats of n = {n} drawn at once), got {tuple(xs.shape)}")
        out += list(_check_finite(xs.detach(), "model samples").double().cpu().split(n))
    return out


def noise_floor_ratio(x: Tensor | Callable[[int, torch.Generator], Tensor], target: Sampler,
                      distance: Callable[[Tensor, Tensor], float] | None = None,
                      n: int | None = None, n_repeats: int | None = None, seed: int | None = None) -> Ratio:
    r"""Noise-floor ratio :math:`\rho = \mathbb E D(\hat x_n, y_n) / \mathbb E D(y_n, y'_n)` of a model.

    ``x`` is a model sampler ``(n, generator) -> (n, d)`` (or ``(n,)`` in 1D), or one fixed model
    sample ``(n, d)``; ``target`` is any :class:`Sampler`. Book chapter 3, "Measured against the
    truth": :math:`\rho = 1` means indistinguishable from exact samples of that size ``n``.

    Each repeat draws a model sample of size ``n`` (a sampler is called for several repeats at once
    and the draw split) and scores it; the result is the mean score over the repeats divided by
    the floor. Two estimators, both unbiased for the same :math:`\rho`:

    * 1D, default distance, ``target.cdf`` present: :math:`D = W_1`. Given the model sample, the
      expectation over the exact sample is computed exactly, :math:`\int \mathbb E|F_{\hat x}(t) -
      K_t/n|\,dt` with :math:`K_t \sim \mathrm{Bin}(n, F(t))`, and so is the floor
      :math:`\int \mathbb E|K_t - K'_t|/n\,dt`: only the model's samples are random.
    * otherwise (``distance``, default :func:`wasserstein1_1d` in 1D and :func:`sliced_wasserstein`
      with p = 2 and 200 fixed directions for ``d >= 2``): each repeat also draws two exact
      samples :math:`y, y'` and scores :math:`D(\hat x, y)` and the floor :math:`D(y, y')`.

    Returns a :class:`Ratio` with ``se``, the delta-method standard error
    :math:`\mathrm{sd}(D_r - \rho F_r) / (\sqrt R\, \bar F)` over the ``R`` repeats (numerators
    :math:`D_r`, floors :math:`F_r`), and ``n_repeats = R``. ``n_repeats=None`` runs a pilot of
    25 repeats to measure the spread, discards it, and draws the ``R`` (64 to 400) fresh repeats
    that bring ``se`` to about 0.03. For exact samples the per-repeat spread is skewed (1D mixture
    at n = 20,000: sd 0.23, median 0.93, 99% quantile 1.8), so ``R`` is at least 64 there; the 2D
    mixture at n = 4,000 needed about 300-400. Model samples drawn: ``n * (25 + R)``. For a fixed
    sample ``se`` covers the exact samples' noise only (0 in the exact 1D case), not the model's.
    ``seed`` seeds the model and exact draws; by default it is the run's stream 0
    (:func:`minigen.runtime.seed`), so it moves with the book seed (``MINIGEN_SEED``).
    """
    if isinstance(x, Tensor):
        x = x[:, None] if x.dim() == 1 else x
        if x.dim() != 2 or x.shape[1] != target.dim:
            raise ValueError(f"model samples must have shape ({len(x)}, {target.dim}) to match "
                             f"the target, got {tuple(x.shape)}")
        n = len(_check_finite(x.detach(), "model samples"))
    elif n is None:
        raise ValueError("pass the sample size n together with a model sampler")
    if n < 1 or (n_repeats is not None and n_repeats < 2):
        raise ValueError(f"need n >= 1 and n_repeats >= 2 (or None), got n={n}, n_repeats={n_repeats}")
    g = torch.Generator().manual_seed(runtime.seed(0) if seed is None else seed)
    exact = distance is None and target.dim == 1 and callable(getattr(target, "cdf", None))
    if exact:
        grid = _cdf_grid(target.sample(n, g, dtype=torch.float64)[:, 0].sort().values, target.cdf, 20_001)
        floor = _expected_w1_between_exact(target.cdf, n, grid[::20])
        if isinstance(x, Tensor):  # nothing random left
            num = _expected_w1_to_exact(x[:, 0], target.cdf, grid)
            return Ratio(num / floor, 0.0, 1)
    d = distance or _default_distance

    def scores(k: int) -> tuple[np.ndarray, np.ndarray]:  # k repeats: (numerators, floors)
        num, den = [], []
        for xs in _model_samples(x, n, k, target.dim, g):
            if exact:
                num.append(_expected_w1_to_exact(xs[:, 0], target.cdf, grid))
                den.append(floor)
                continue
            y, y2 = target.sample(n, g, dtype=torch.float64), target.sample(n, g, dtype=torch.float64)
            num.append(float(d(xs, y)))
            den.append(float(d(y, y2)))
        return np.array(num), np.array(den)

    if n_repeats is None:  # a pilot sizes the run, then is discarded: no stopping bias
        _, se = _ratio_and_se(*scores(PILOT_REPEATS))
        n_repeats = math.ceil(PILOT_REPEATS * (1.5 * se / SE_TARGET) ** 2)  # a short pilot
        # underestimates a skewed spread: measured on exact samples, 1.2 left se at 0.03-0.04,
        # and a pilot that missed the tail still chose 25 repeats (1D mixture: 0.93 ± 0.02)
        n_repeats = min(max(n_repeats, MIN_REPEATS), MAX_REPEATS)
    rho, se = _ratio_and_se(*scores(n_repeats))
    return Ratio(rho, se, n_repeats)


def _ratio_and_se(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    """``mean(num) / mean(den)`` and its delta-method standard error over paired repeats."""
    rho = num.mean() / den.mean()
    return float(rho), float((num - rho * den).std(ddof=1) / (math.sqrt(len(num)) * den.mean()))


# Images (chapter 12): Fréchet distance in a feature space, conditional accuracy, memorisation.

def _sqrtm_psd(a: Tensor) -> Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix ``(d, d)``."""
    lam, u = torch.linalg.eigh(a)
    return (u * lam.clamp(min=0).sqrt()) @ u.T


def frechet_distance_gaussian(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    r"""Squared 2-Wasserstein distance between :math:`\N(\mu_1, \Sigma_1)` and :math:`\N(\mu_2, \Sigma_2)` (:eq:`eq-img-frechet`).

    .. math:: \lVert \mu_1 - \mu_2 \rVert^2 + \operatorname{Tr}\big(\Sigma_1 + \Sigma_2
        - 2 (\Sigma_1^{1/2} \Sigma_2 \Sigma_1^{1/2})^{1/2}\big),

    computed in float64 with symmetric square roots (eigendecompositions), so it stays real and
    symmetric in its arguments up to rounding. ``mu`` ``(d,)``, ``cov`` ``(d, d)``.
    """
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"need mu (d,) and cov (d, d) of one d, got {tuple(mu1.shape)}, "
                         f"{tuple(cov1.shape)}, {tuple(mu2.shape)}, {tuple(cov2.shape)}")
    mu1, cov1, mu2, cov2 = (t.detach().double().cpu() for t in (mu1, cov1, mu2, cov2))
    s1 = _sqrtm_psd(cov1)
    cross = torch.linalg.eigvalsh(s1 @ cov2 @ s1).clamp(min=0).sqrt().sum()
    return float(((mu1 - mu2) ** 2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * cross)


def frechet_distance(f1: Tensor, f2: Tensor) -> float:
    r"""Fréchet distance between two sets of features ``(n1, d)`` and ``(n2, d)`` (:eq:`eq-img-frechet`).

    :func:`frechet_distance_gaussian` of their sample means and covariances (FID's statistic when
    the features are a classifier's). It is biased upwards at finite ``n``: compare values only at
    equal sample sizes, or divide by the distance between two real samples of those sizes.
    """
    for name, f in (("f1", f1), ("f2", f2)):
        if f.dim() != 2 or f.shape[0] < 2:
            raise ValueError(f"{name} must be (n, d) with n >= 2, got {tuple(f.shape)}")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"f1 is {tuple(f1.shape)} but f2 is {tuple(f2.shape)}: same feature dimension needed")
    f1, f2 = _check_finite(f1.double(), "f1"), _check_finite(f2.double(), "f2")
    return frechet_distance_gaussian(f1.mean(0), torch.cov(f1.T).reshape(f1.shape[1], -1),
                                     f2.mean(0), torch.cov(f2.T).reshape(f2.shape[1], -1))


def conditional_accuracy(predict: Callable[[Tensor], Tensor], x: Tensor, y: Tensor) -> Tensor:
    r"""Fraction of the samples of each class classified as that class, ``(K,)`` (:eq:`eq-img-accuracy`).

    ``x`` ``(n, d)`` generated for labels ``y`` ``(n,)`` in ``0 .. K-1``; ``predict`` maps images to
    labels ``(n,)``. Entry ``c`` is :math:`\frac{1}{n_c}\sum_{i: y_i = c} 1[\hat y(x_i) = c]`
    (NaN for a class with no sample); its mean over classes is the balanced accuracy.
    """
    if x.dim() != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"x must be (n, d) and y (n,), got {tuple(x.shape)} and {tuple(y.shape)}")
    y = y.long().cpu()
    hit = (predict(x).cpu() == y).double()
    k = int(y.max()) + 1
    return torch.zeros(k, dtype=torch.float64).index_add_(0, y, hit) / torch.bincount(y, minlength=k)


def nearest_distances(x: Tensor, reference: Tensor, chunk: int = 1_024) -> Tensor:
    r"""Euclidean distance from each row of ``x`` ``(n, d)`` to its nearest row of ``reference`` ``(m, d)``; ``(n,)``."""
    if x.dim() != 2 or reference.dim() != 2 or x.shape[1] != reference.shape[1]:
        raise ValueError(f"x (n, d) and reference (m, d) must share d, got {tuple(x.shape)} and "
                         f"{tuple(reference.shape)}")
    reference = reference.to(x)
    return torch.cat([torch.cdist(xc, reference).min(1).values for xc in x.split(chunk)])


class Memorisation(NamedTuple):
    """What :func:`memorisation` returns: the statistic, its standard error, and the distances."""

    p_closer: float
    se: float
    d_generated: Tensor
    d_held: Tensor


def memorisation(generated: Tensor, train: Tensor, held: Tensor) -> Memorisation:
    r"""Are generated images closer to the training set than unseen real images are? (:eq:`eq-img-memo`).

    With :math:`d(x) = \min_j \lVert x - x^{\text{train}}_j \rVert` for each generated image
    ``generated`` ``(n, d)`` and each held-out image ``held`` ``(m, d)``, returns

    .. math:: \hat p = P\big(d(\hat x) < d(x^{\text{held}})\big)

    over all pairs (ties count one half: the Mann-Whitney statistic), and its standard error
    :math:`\sqrt{(n + m + 1) / (12 n m)}` when both distances have one law. :math:`\hat p \approx
    1/2`: generated images sit as far from the training set as new real images do; a model that
    copies its training images has :math:`d(\hat x) = 0` and :math:`\hat p \to 1`.
    """
    d_gen, d_held = nearest_distances(generated, train), nearest_distances(held, train)
    diff = d_gen[:, None] - d_held[None, :]  # (n, m)
    p = float((diff < 0).double().mean() + 0.5 * (diff == 0).double().mean())
    n, m = len(d_gen), len(d_held)
    return Memorisation(p, math.sqrt((n + m + 1) / (12 * n * m)), d_gen, d_held)


def count_rows(networks: nn.Module | Sequence[nn.Module],
               fn: Callable[[], Any]) -> tuple[Any, int, int]:
    """Call ``fn()`` while counting the forward calls of ``networks``; return ``(result, calls, rows)``.

    ``rows`` sums the leading dimension of the first input of every call: a call on a ``(B, d)``
    batch evaluates a network at ``B`` points. The hooks are removed afterwards, also on error.
    """
    networks = [networks] if isinstance(networks, nn.Module) else list(networks)
    counts = [0, 0]

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else next(iter(kwargs.values()))
        counts[0] += 1
        counts[1] += int(x.shape[0]) if x.dim() > 0 else 1

    handles = [net.register_forward_pre_hook(hook, with_kwargs=True) for net in networks]
    try:
        result = fn()
    finally:
        for handle in handles:
            handle.remove()
    return result, counts[0], counts[1]


def input_layers(model: nn.Module) -> list[nn.Linear]:
    """The input layer of every network in ``model``: the first ``nn.Linear`` child of each module
    that has ``nn.Linear`` children (an MLP built by :func:`minigen.networks.mlp`, say).

    One point passing through a network enters it through that layer, so counting its rows counts
    network evaluations without naming the model's parts.
    """
    layers = []
    for module in model.modules():
        first = next((c for c in module.children() if isinstance(c, nn.Linear)), None)
        if first is not None:
            layers.append(first)
    return layers


def evaluations_per_sample(model: Model, n: int,
                           generator: torch.Generator | None = None) -> float:
    r"""Network evaluations per sample, :math:`\text{NFE} = R / n` (book :eq:`eq-cmp-nfe`).

    Draws ``model.sample(n, generator)`` ``(n, d)`` and counts the rows :math:`R` that enter any
    of the model's networks on the way (:func:`input_layers`): 1 for a one-shot generator,
    ``n_steps`` times the evaluations per step for an ODE or SDE solver, one per coupling layer for
    a coupling flow (each layer has its own network), and for an iterative inverse (a monotone
    flow) its quadrature nodes times its iterations, plus any set-up evaluations shared by the
    batch, divided by ``n``. A model without networks (a fixed Gaussian) costs 0.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    layers = input_layers(model)
    x, calls, rows = count_rows(layers, lambda: model.sample(n, generator))
    if x.shape[0] != n:
        raise ValueError(f"model.sample(n) returned {x.shape[0]} samples instead of n = {n}")
    if layers and calls == 0:
        raise ValueError(f"none of the {len(layers)} networks of {type(model).__name__} was "
                         "called while sampling")
    return rows / n


def loglik_gap(log_p: Tensor, log_q: Tensor) -> tuple[float, float]:
    r"""Paired log-likelihood gap :math:`\frac1N\sum_i [\log p(x_i) - \log q(x_i)]` and its standard error.

    ``log_p`` and ``log_q`` ``(N,)`` are the exact and the model log densities at the *same* test
    points :math:`x_i \sim p` (book :eq:`eq-cmp-gap`). Pairing removes the test set's own
    fluctuation around :math:`-H(p)`, so the error is :math:`\operatorname{sd}(\log p - \log q)/\sqrt N`.
    """
    if log_p.shape != log_q.shape or log_p.dim() != 1 or len(log_p) < 2:
        raise ValueError(f"log_p and log_q must both be (N,) with N >= 2, got "
                         f"{tuple(log_p.shape)} and {tuple(log_q.shape)}")
    diff = log_p.detach().double() - log_q.detach().double()
    if not torch.isfinite(diff).all():
        raise ValueError(f"{int((~torch.isfinite(diff)).sum())} log densities are not finite")
    return float(diff.mean()), float(diff.std() / math.sqrt(len(diff)))

__all__ += ['count_rows', 'input_layers', 'evaluations_per_sample', 'loglik_gap']
