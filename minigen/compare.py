r"""Measuring generative models side by side: cost of sampling, paired log-likelihood gaps, a table.

The closing chapter compares every model of the book on the same targets. Its figures are

- the *sampling cost*: wall-clock and CPU seconds to draw :math:`n` samples, and the number of
  network evaluations each sample needs, counted by a forward hook (book :eq:`eq-cmp-nfe`);
- the *log-likelihood gap* on test points :math:`x_i \sim p`, paired with the exact density
  (book :eq:`eq-cmp-gap`),

  .. math:: \widehat{\Delta} = \frac1N \sum_{i=1}^N \big[\log p(x_i) - \log q_\theta(x_i)\big]
     \;\xrightarrow[N\to\infty]{}\; \KL(p \,\|\, q_\theta) \ge 0,

  whose standard error is that of the paired differences only;
- and the table that collects them, as HTML (notebook outputs render HTML tables, not Markdown).
"""
from __future__ import annotations

import html
import math
import time
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = ["timed", "count_rows", "evaluations_per_sample", "loglik_gap", "html_table"]


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """Call ``fn()`` once; return ``(result, wall seconds, CPU seconds)``.

    Wall time by ``time.perf_counter``, CPU time of this process by ``time.process_time``. On a
    shared, loaded machine the wall time is inflated by waiting; the CPU time is not (with one
    intra-op thread it stays at or below the wall time on an idle machine).
    """
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def count_rows(network: nn.Module, fn: Callable[[], Any]) -> tuple[Any, int, int]:
    """Call ``fn()`` while counting the forward calls of ``network``; return ``(result, calls, rows)``.

    ``rows`` sums the leading dimension of the first input of every call: a call on a ``(B, d)``
    batch evaluates the network at ``B`` points. The hook is removed afterwards, also on error.
    """
    counts = [0, 0]

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else next(iter(kwargs.values()))
        counts[0] += 1
        counts[1] += int(x.shape[0]) if x.dim() > 0 else 1

    handle = network.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        result = fn()
    finally:
        handle.remove()
    return result, counts[0], counts[1]


def evaluations_per_sample(sample: Callable[[int], Tensor], network: nn.Module, n: int) -> float:
    r"""Network evaluations per sample, :math:`\text{NFE} = R / n` (book :eq:`eq-cmp-nfe`).

    Draws ``sample(n)`` (``(n, d)``) and counts the rows :math:`R` that pass through ``network``
    on the way: 1 for a one-shot generator, ``n_steps`` times the evaluations per step for an ODE
    or SDE solver, and for an iterative inverse (a monotone flow) its quadrature nodes times its
    iterations, plus any set-up evaluations shared by the batch, divided by ``n``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    x, calls, rows = count_rows(network, lambda: sample(n))
    if x.shape[0] != n:
        raise ValueError(f"sample(n) returned {x.shape[0]} samples instead of n = {n}")
    if calls == 0:
        raise ValueError("the network was never called while sampling: is it the model's network?")
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
