"""Plotting helpers shared by the chapters. The only minigen module that imports matplotlib.

Every function draws on an ``ax`` (created when omitted), labels its axes, and returns the ax.
"""
from __future__ import annotations

import html
from typing import Any, Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from torch import Tensor

__all__ = ["density_1d", "samples_2d", "density_2d", "loss_curve", "optimizer_paths", "grid_2d"]


def _ax(ax: Axes | None, figsize: tuple[float, float] = (5, 3.5)) -> Axes:
    return ax if ax is not None else plt.subplots(figsize=figsize, layout="constrained")[1]


def _np(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def density_1d(samples: Tensor | None = None, target=None, *, model_log_prob=None,
               bounds: tuple[float, float] = (-3.0, 3.0), bins: int = 100, ax: Axes | None = None,
               label: str = "model samples", title: str | None = None) -> Axes:
    """Histogram of 1D ``samples`` ``(n,)`` or ``(n, 1)`` with the exact density of ``target``.

    ``model_log_prob`` (a function ``(m, 1) -> (m,)``) adds the model's own density as a curve.
    """
    ax = _ax(ax)
    t = torch.linspace(*bounds, 600, dtype=torch.float64)[:, None]
    if samples is not None:
        ax.hist(_np(samples).ravel(), bins=bins, range=bounds, density=True, alpha=0.45,
                color="C0", label=label)
    if model_log_prob is not None:
        with torch.no_grad():
            ax.plot(t[:, 0], _np(model_log_prob(t.float()).exp()), "C1", lw=2, label="model density")
    if target is not None:
        ax.plot(t[:, 0], target.log_prob(t).exp(), "k--", lw=1.5, label="exact density")
    ax.set(xlabel="$x$", ylabel="density", xlim=bounds, title=title)
    ax.legend(frameon=False, fontsize=8)
    return ax


def samples_2d(x: Tensor, *, ax: Axes | None = None, title: str | None = None,
               bounds: tuple[float, float, float, float] | None = None, s: float = 1.0,
               color: str = "C0", label: str | None = None, alpha: float = 0.4) -> Axes:
    """Scatter plot of 2D samples ``(n, 2)``."""
    ax = _ax(ax, (4, 4))
    x = _np(x)
    ax.scatter(x[:, 0], x[:, 1], s=s, c=color, alpha=alpha, label=label, rasterized=True)
    if bounds is not None:
        ax.set(xlim=bounds[:2], ylim=bounds[2:])
    ax.set(xlabel="$x_1$", ylabel="$x_2$", title=title, aspect="equal")
    if label is not None:
        ax.legend(frameon=False, fontsize=8, markerscale=5)
    return ax


def grid_2d(bounds: tuple[float, float, float, float], n: int = 200) -> tuple[Tensor, Tensor, Tensor]:
    """A regular grid: returns ``(X, Y, points)`` with ``X, Y`` ``(n, n)`` and ``points`` ``(n*n, 2)``."""
    xs = torch.linspace(bounds[0], bounds[1], n)
    ys = torch.linspace(bounds[2], bounds[3], n)
    X, Y = torch.meshgrid(xs, ys, indexing="xy")
    return X, Y, torch.stack([X.reshape(-1), Y.reshape(-1)], 1)


def density_2d(log_prob: Callable[[Tensor], Tensor], *,
               bounds: tuple[float, float, float, float] = (-3, 3, -3, 3), n: int = 200,
               ax: Axes | None = None, title: str | None = None, cmap: str = "viridis") -> Axes:
    """Heatmap of the density ``exp(log_prob(points))`` for ``points`` ``(m, 2) -> (m,)``."""
    ax = _ax(ax, (4, 4))
    X, Y, pts = grid_2d(bounds, n)
    with torch.no_grad():
        z = log_prob(pts).exp().reshape(n, n)
    ax.pcolormesh(_np(X), _np(Y), _np(z), cmap=cmap, shading="auto", rasterized=True)
    ax.set(xlabel="$x_1$", ylabel="$x_2$", title=title, aspect="equal")
    return ax


def loss_curve(history: Mapping[str, Tensor | Sequence[float]] | Tensor, *, ax: Axes | None = None,
               logy: bool = False, smooth: int = 1, title: str | None = None,
               ylabel: str = "loss") -> Axes:
    """Loss against step; ``history`` is one curve or a ``{label: curve}`` mapping.

    ``smooth > 1`` draws a moving average over that many steps.
    """
    ax = _ax(ax)
    curves = history if isinstance(history, Mapping) else {"loss": history}
    for name, h in curves.items():
        y = _np(torch.as_tensor(h, dtype=torch.float64)).reshape(len(h), -1)[:, 0]
        if smooth > 1:
            y = np.convolve(y, np.ones(smooth) / smooth, mode="valid")
        ax.plot(np.arange(len(y)) + (smooth - 1), y, lw=1, label=name)
    if logy:
        ax.set_yscale("log")
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    if len(curves) > 1:
        ax.legend(frameon=False, fontsize=8)
    return ax


def optimizer_paths(f: Callable[[Tensor], Tensor], paths: Mapping[str, Tensor], *,
                    bounds: tuple[float, float, float, float] = (-2, 2, -1, 3),
                    optimum: tuple[float, float] | None = None, ax: Axes | None = None,
                    levels: int = 30, title: str | None = None) -> Axes:
    """Optimizer trajectories ``{name: (T, 2)}`` drawn on log-spaced contours of ``f((m, 2)) -> (m,)``."""
    ax = _ax(ax, (6, 4.5))
    X, Y, pts = grid_2d(bounds, 300)
    with torch.no_grad():
        z = _np(f(pts.double()).reshape(X.shape))
    ax.contour(_np(X), _np(Y), z, levels=np.logspace(-1, np.log10(z.max()), levels),
               cmap="Greys", linewidths=0.6)
    for name, path in paths.items():
        p = _np(path)
        ax.plot(p[:, 0], p[:, 1], lw=1.2, label=name)
    if optimum is not None:
        ax.plot(*optimum, "r*", ms=12, label="minimum")
    ax.set(xlabel="$x$", ylabel="$y$", xlim=bounds[:2], ylim=bounds[2:], title=title)
    ax.legend(frameon=False, fontsize=8)
    return ax


# --- Chapters 1 (function approximation) and 2 (optimizers) ---------------------------------------
__all__ += ["curves", "regression_band"]


def curves(series: Mapping[str, tuple[Tensor | Sequence[float], Tensor | Sequence[float]]], *,
           xlabel: str, ylabel: str, logx: bool = False, logy: bool = False,
           marker: str | None = "o", styles: Mapping[str, str] | None = None,
           ax: Axes | None = None, title: str | None = None) -> Axes:
    """Curves ``{label: (x, y)}`` on one axis, e.g. an error against width or against learning rate.

    Non-finite ``y`` values (a diverged run) are left out of their curve. ``styles`` maps a label
    to a matplotlib format string (``"k--"``) for that curve.
    """
    ax = _ax(ax)
    for name, (x, y) in series.items():
        x, y = _np(torch.as_tensor(x)).astype(float), _np(torch.as_tensor(y)).astype(float)
        keep = np.isfinite(y)
        fmt = (styles or {}).get(name, "-")
        ax.plot(x[keep], y[keep], fmt, marker=marker, ms=3, lw=1.2, label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if len(series) > 1:
        ax.legend(frameon=False, fontsize=8)
    return ax


def regression_band(x: Tensor, y: Tensor, grid: Tensor, mean: Tensor, lower: Tensor,
                    upper: Tensor, *, true_mean: Tensor | None = None,
                    true_band: tuple[Tensor, Tensor] | None = None, level: float = 0.9,
                    ax: Axes | None = None, title: str | None = None) -> Axes:
    """Data ``(n, 1)`` pairs, a fitted mean and its band on ``grid`` ``(m, 1)``, optionally the truth."""
    ax = _ax(ax, (6, 3.5))
    g = _np(grid).ravel()
    ax.scatter(_np(x).ravel(), _np(y).ravel(), s=2, c="0.6", alpha=0.5, label="data",
               rasterized=True)
    ax.fill_between(g, _np(lower).ravel(), _np(upper).ravel(), color="C0", alpha=0.3,
                    label=f"model {level:.0%} band")
    ax.plot(g, _np(mean).ravel(), "C0", lw=1.5, label="model mean")
    if true_mean is not None:
        ax.plot(g, _np(true_mean).ravel(), "k--", lw=1, label="true mean")
    if true_band is not None:
        for i, edge in enumerate(true_band):
            ax.plot(g, _np(edge).ravel(), "k:", lw=1, label=f"true {level:.0%} band" if i == 0 else None)
    ax.set(xlabel="$x$", ylabel="$y$", title=title)
    ax.legend(frameon=False, fontsize=8)
    return ax


# --- chapters 3 (normalizing flows) and 4 (MMD and kernel divergences) ---
__all__ += ["warped_grid", "kernel_field_2d"]


def warped_grid(transform: Callable[[Tensor], Tensor], *,
                bounds: tuple[float, float, float, float] = (-2.5, 2.5, -2.5, 2.5),
                n_lines: int = 15, n_points: int = 200, ax: Axes | None = None,
                title: str | None = None, color: str = "C0") -> Axes:
    """Images under ``transform`` ``(m, 2) -> (m, 2)`` of the lines of a regular grid of ``bounds``."""
    ax = _ax(ax, (4, 4))
    t = torch.linspace(0, 1, n_points)
    for i, c in enumerate(torch.linspace(0, 1, n_lines)):
        for horizontal in (True, False):
            u, v = (t, c.expand(n_points)) if horizontal else (c.expand(n_points), t)
            pts = torch.stack([bounds[0] + u * (bounds[1] - bounds[0]),
                               bounds[2] + v * (bounds[3] - bounds[2])], 1)  # (n_points, 2)
            with torch.no_grad():
                out = _np(transform(pts))
            ax.plot(out[:, 0], out[:, 1], color=color, lw=0.6)
    ax.set(xlabel="$x_1$", ylabel="$x_2$", title=title, aspect="equal")
    return ax


def kernel_field_2d(field: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, *,
                    mu: Tensor | None = None, bounds: tuple[float, float, float, float] = (-2, 2, -2, 2),
                    n: int = 150, ax: Axes | None = None, title: str | None = None) -> Axes:
    """Heatmap of a scalar ``field`` ``(m, 2) -> (m,)`` (e.g. :math:`k\\star(\\mu-\\nu)`) with the model
    points ``x`` ``(n, 2)`` (marker area proportional to the weights ``mu``) and the target ``y``."""
    ax = _ax(ax, (4, 4))
    X, Y, pts = grid_2d(bounds, n)
    with torch.no_grad():
        z = _np(field(pts).reshape(n, n))
    lim = float(np.abs(z).max()) or 1.0
    ax.pcolormesh(_np(X), _np(Y), z, cmap="RdBu_r", vmin=-lim, vmax=lim, shading="auto",
                  rasterized=True)
    yy = _np(y)
    ax.scatter(yy[:, 0], yy[:, 1], s=3, c="k", alpha=0.5, label="target", rasterized=True)
    xx = _np(x)
    size = 4.0 if mu is None else 4.0 * len(xx) * _np(mu)
    ax.scatter(xx[:, 0], xx[:, 1], s=size, c="C2", alpha=0.8, label="model", rasterized=True)
    ax.set(xlabel="$x_1$", ylabel="$x_2$", xlim=bounds[:2], ylim=bounds[2:], title=title,
           aspect="equal")
    ax.legend(frameon=False, fontsize=8, loc="upper right", markerscale=2)
    return ax


# --- Chapters 5 (GANs) and 6 (diffusion) ---------------------------------------------------------
__all__ += ["mode_mass_bars"]


def mode_mass_bars(masses: Mapping[str, Tensor | np.ndarray], expected: float | None = None, *,
                ax: Axes | None = None, title: str | None = None) -> Axes:
    """Grouped bars of the mass a model puts on each mode, ``{model: (K,)}``, with the exact mass as a line."""
    ax = _ax(ax, (6, 3))
    width = 0.8 / len(masses)
    for i, (name, m) in enumerate(masses.items()):
        m = _np(m).ravel()
        ax.bar(np.arange(len(m)) + (i - (len(masses) - 1) / 2) * width, m, width, label=name)
    if expected is not None:
        ax.axhline(expected, color="k", ls="--", lw=1, label="exact")
    ax.set(xlabel="mode", ylabel="mass", title=title)
    ax.legend(frameon=False, fontsize=8)
    return ax


# --- Chapters 9 (source estimation) and 10 (simulation-based inference) --------------------------
__all__ += ["samples_panels", "tradeoff"]


def samples_panels(samples: Mapping[str, Tensor], *, bounds: tuple[float, float, float, float],
                   xlabel: str = r"$\theta_1$", ylabel: str = r"$\theta_2$", s: float = 1.0,
                   panel_size: float = 2.8) -> np.ndarray:
    """One scatter panel per ``{title: (n, 2) samples}``, side by side on shared axes; returns the axes."""
    fig, axes = plt.subplots(1, len(samples), figsize=(panel_size * len(samples), panel_size),
                             layout="constrained", sharex=True, sharey=True, squeeze=False)
    for ax, (title, x) in zip(axes[0], samples.items()):
        x = _np(x)
        ax.scatter(x[:, 0], x[:, 1], s=s, alpha=0.3, rasterized=True)
        ax.set(xlim=bounds[:2], ylim=bounds[2:], title=title, xlabel=xlabel, aspect="equal")
    axes[0, 0].set_ylabel(ylabel)
    return axes[0]


def tradeoff(x: Sequence[float], y: Sequence[float], labels: Sequence[str], *, xlabel: str,
             ylabel: str, reference: Mapping[str, tuple[float, float]] | None = None,
             ax: Axes | None = None, title: str | None = None) -> Axes:
    """A curve through points ``(x_k, y_k)``, each annotated with ``labels[k]`` (e.g. the value of
    a weight); ``reference`` adds labelled star markers ``{label: (x, y)}``."""
    ax = _ax(ax)
    ax.plot(x, y, "o-", ms=4, lw=1.2, label="estimates")
    for xi, yi, text in zip(x, y, labels):
        ax.annotate(text, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for k, (name, point) in enumerate((reference or {}).items()):
        ax.plot(*point, "*", ms=10, color=f"C{k + 1}", label=name)
    ax.margins(0.12)  # room for the annotations
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(frameon=False, fontsize=8)
    return ax


# --- Chapters 7 (flow matching) and 8 (optimal transport) ----------------------------------------
__all__ += ["trajectories_2d", "transport_plan_2d"]


def trajectories_2d(paths: Mapping[str, Tensor], *, n_show: int = 300,
                    bounds: tuple[float, float, float, float] | None = None,
                    panel_size: float = 3.2) -> np.ndarray:
    """One panel per ``{title: path (T + 1, B, 2)}``: start points, ODE paths and end points."""
    fig, axes = plt.subplots(1, len(paths), figsize=(panel_size * len(paths), panel_size),
                             layout="constrained", sharex=True, sharey=True, squeeze=False)
    for ax, (title, path) in zip(axes[0], paths.items()):
        p = _np(path)[:, :n_show]
        ax.plot(p[:, :, 0], p[:, :, 1], color="olive", lw=0.4, alpha=0.4, rasterized=True)
        ax.scatter(p[0, :, 0], p[0, :, 1], s=3, c="k", label="$x_0$ (source)", zorder=3)
        ax.scatter(p[-1, :, 0], p[-1, :, 1], s=3, c="C0", label="$x_1$ (model)", zorder=3)
        ax.set(title=title, xlabel="first coordinate", aspect="equal")
        if bounds is not None:
            ax.set(xlim=bounds[:2], ylim=bounds[2:])
    axes[0, 0].set_ylabel("second coordinate")
    axes[0, 0].legend(frameon=False, fontsize=8, markerscale=3, loc="lower left")
    return axes[0]


def transport_plan_2d(x: Tensor, y: Tensor, plan: Tensor, *, a: Tensor | None = None,
                      b: Tensor | None = None, ax: Axes | None = None, title: str | None = None,
                      threshold: float = 1e-3) -> Axes:
    """Point clouds ``x`` ``(n, 2)``, ``y`` ``(m, 2)`` joined by segments with opacity ``plan / max``.

    Entries below ``threshold * max(plan)`` are not drawn; ``a``, ``b`` (weights) scale the markers.
    """
    ax = _ax(ax, (4, 4))
    x, y, P = _np(x), _np(y), _np(plan)
    from matplotlib.collections import LineCollection

    i, j = np.nonzero(P > threshold * P.max())
    colors = np.zeros((len(i), 4))
    colors[:, :3], colors[:, 3] = 0.3, P[i, j] / P.max()
    ax.add_collection(LineCollection(np.stack([x[i], y[j]], 1), colors=colors, linewidths=0.6))
    sa = 12 if a is None else 12 * len(x) * _np(a)
    sb = 12 if b is None else 12 * len(y) * _np(b)
    ax.scatter(x[:, 0], x[:, 1], s=sa, c="C3", label="source", zorder=3)
    ax.scatter(y[:, 0], y[:, 1], s=sb, c="C0", label="target", zorder=3)
    ax.set(xlabel="$x_1$", ylabel="$x_2$", title=title, aspect="equal")
    ax.legend(frameon=False, fontsize=8)
    return ax


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

__all__ += ['html_table']
