r"""Measuring generative models side by side: cost of sampling, paired log-likelihood gaps, a table.

The closing chapter compares every model of the book on the same targets. Its figures are

- the *sampling cost*: wall-clock and CPU seconds to draw :math:`n` samples, and the number of
  network evaluations each sample needs, counted by forward hooks on the input layer of every
  network of a :class:`minigen.train.Model` (book :eq:`eq-cmp-nfe`);
- the *log-likelihood gap* on test points :math:`x_i \sim p`, paired with the exact density
  (book :eq:`eq-cmp-gap`),

  .. math:: \widehat{\Delta} = \frac1N \sum_{i=1}^N \big[\log p(x_i) - \log q_\theta(x_i)\big]
     \;\xrightarrow[N\to\infty]{}\; \KL(p \,\|\, q_\theta) \ge 0,

  whose standard error is that of the paired differences only;
- a baseline that knows only the first two moments, :func:`moment_matched`;
- and the table that collects them, as HTML (notebook outputs render HTML tables, not Markdown).
"""
from __future__ import annotations

import html
import math
import time
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from .nn import _random
from .train import Model

__all__ = ["timed", "count_rows", "input_layers", "evaluations_per_sample", "loglik_gap", "Gaussian",
           "moment_matched", "html_table"]


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """Call ``fn()`` once; return ``(result, wall seconds, CPU seconds)``.

    Wall time by ``time.perf_counter``, CPU time of this process by ``time.process_time``. On a
    shared, loaded machine the wall time is inflated by waiting; the CPU time is not (with one
    intra-op thread it stays at or below the wall time on an idle machine).
    """
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


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
    that has ``nn.Linear`` children (an MLP built by :func:`minigen.nn.mlp`, say).

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


class Gaussian(Model):
    r"""The Gaussian :math:`\N(m, \Sigma)` as a :class:`minigen.train.Model` with no network: the
    baseline that knows two moments and nothing else.

    ``mean`` ``(d,)`` and ``cov`` ``(d, d)`` (symmetric positive definite) are kept in float64;
    ``sample(n, generator)`` returns :math:`m + L z` ``(n, d)`` with :math:`\Sigma = L L^\top`,
    ``log_prob(x)`` ``(B, d) -> (B,)`` the exact log density. Nothing is trained.
    """

    def __init__(self, mean: Tensor, cov: Tensor):
        super().__init__()
        mean, cov = torch.as_tensor(mean, dtype=torch.float64), torch.as_tensor(cov, dtype=torch.float64)
        if mean.dim() != 1 or cov.shape != (len(mean), len(mean)):
            raise ValueError(f"mean must be (d,) and cov (d, d), got {tuple(mean.shape)} and "
                             f"{tuple(cov.shape)}")
        chol, info = torch.linalg.cholesky_ex(cov)
        if info != 0 or not torch.allclose(cov, cov.T):
            raise ValueError("cov must be symmetric positive definite")
        self.dim, self.recipe = len(mean), {}
        self.register_buffer("mean", mean)
        self.register_buffer("chol", chol)  # (d, d), lower triangular

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.mean + _random(torch.randn, (n, self.dim), self.mean, generator) @ self.chol.T  # (n, d)

    def log_prob(self, x: Tensor) -> Tensor:
        x = self._check_batch(x, "x").to(self.mean)
        return torch.distributions.MultivariateNormal(self.mean, scale_tril=self.chol).log_prob(x)


def moment_matched(mixture: Any) -> Gaussian:
    r"""The Gaussian with a mixture's exact mean and covariance (book :eq:`eq-cmp-moments`),

    .. math:: m = \sum_k \pi_k \mu_k, \qquad \Sigma = \sum_k \pi_k \big[\operatorname{diag}
              \sigma_k^2 + (\mu_k - m)(\mu_k - m)^\top\big]

    (the law of total covariance). ``mixture`` has ``weights`` ``(K,)``, ``means`` ``(K, d)`` and
    diagonal ``stds`` ``(K, d)``, as a :class:`minigen.data.GaussianMixture`.
    """
    w, mu = mixture.weights.double(), mixture.means.double()  # (K,), (K, d)
    var = mixture.stds.double().expand_as(mu) ** 2  # (K, d)
    mean = w @ mu  # (d,)
    centred = mu - mean  # (K, d)
    return Gaussian(mean, torch.einsum("k,ki,kj->ij", w, centred, centred) + torch.diag(w @ var))


def _cell(value: Any, fmt: str | None) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, float) and fmt is not None:
        return html.escape(format(value, fmt))
    return html.escape(str(value))


def html_table(rows: Sequence[Mapping[str, Any]], formats: Mapping[str, str] | None = None,
               caption: str | None = None) -> str:
    """An HTML ``<table>`` with one row per mapping, columns in the order of the first row's keys.

    ``formats`` maps a column to a format spec for its float values (e.g. ``".2f"``); ``None``
    values show as a dash; every cell is HTML-escaped. Display it with ``IPython.display.HTML``.
    """
    if not rows:
        raise ValueError("html_table needs at least one row")
    columns = list(rows[0])
    for k, row in enumerate(rows):
        if list(row) != columns:
            raise ValueError(f"row {k} has columns {list(row)}, expected {columns}")
    formats = formats or {}
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(row[c], formats.get(c))}</td>" for c in columns)
                   + "</tr>" for row in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
