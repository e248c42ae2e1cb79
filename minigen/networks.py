r"""Network builders: a plain MLP and an MLP conditioned on a scalar (time or noise level).

The scalar :math:`t` enters through Fourier features
:math:`\gamma(t) = (\sin 2\pi\omega_j t, \cos 2\pi\omega_j t)_{j}` concatenated to the input.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable

import torch
from torch import Tensor, nn

__all__ = ["mlp", "FourierFeatures", "ConditionalMLP"]


# Private helpers shared by the other modules (input checks, random draws that follow the input).

def _random(draw: Callable[..., Tensor], shape: tuple[int, ...], like: Tensor,
            generator: torch.Generator | None = None) -> Tensor:
    """``draw(shape)`` (``torch.randn`` or ``torch.rand``) in ``like``'s dtype, on ``like``'s device.

    A ``torch.Generator`` lives on one device: with one, the draw happens there and the result is
    moved, so a CPU generator still seeds a CUDA computation (and the CPU stream is unchanged).
    """
    device = like.device if generator is None else generator.device
    return draw(tuple(shape), generator=generator, dtype=like.dtype, device=device).to(like.device)


def _same_dtype(**tensors: Tensor | None) -> None:
    """Raise ``ValueError`` naming both dtypes when tensors that combine do not share one.

    The package's rule: nothing is converted silently; plain numbers follow the tensors.
    """
    given = [(name, t) for name, t in tensors.items() if t is not None]
    for name, t in given[1:]:
        if t.dtype != given[0][1].dtype:
            raise ValueError(f"{given[0][0]} is {given[0][1].dtype} but {name} is {t.dtype}: inputs "
                             f"that combine must share a dtype (convert one with .to(...))")


def _finite(x: Tensor, name: str) -> None:
    """Raise ``ValueError`` counting the NaN and infinite entries of ``x``."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        raise ValueError(f"{name} has {int(bad.sum())} NaN or infinite entries "
                         f"(of {x.numel()}, shape {tuple(x.shape)})")


def _batch(x: Tensor, name: str) -> Tensor:
    """Check that ``x`` is a non-empty batch of points ``(B, d)``; return it."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor (B, d), got {type(x).__name__}")
    if x.dim() != 2:
        hint = f"; a 1D sample needs {name}[:, None]" if x.dim() == 1 else ""
        raise ValueError(f"{name} must be a batch of points, shape expected (B, d), "
                         f"got {tuple(x.shape)}{hint}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty, shape {tuple(x.shape)}; expected (B, d) with B, d >= 1")
    return x


def _count(n: object, name: str) -> int:
    """Check a number of steps (iterations, points): an integer >= 1."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"{name} must be >= 1 (an integer), got {n!r}")
    return int(n)


def _positive(value: float | Tensor, name: str) -> None:
    """Check a scale (bandwidth, epsilon, step size): finite and > 0."""
    v = float(value)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be positive and finite, got {v}")


def mlp(in_dim: int, out_dim: int, hidden: int = 128, depth: int = 3,
        activation: type[nn.Module] = nn.SiLU) -> nn.Sequential:
    """MLP ``in_dim -> hidden (x depth) -> out_dim``; ``depth`` counts hidden layers."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden), activation()]
    for _ in range(depth - 1):
        layers += [nn.Linear(hidden, hidden), activation()]
    layers.append(nn.Linear(hidden, out_dim))
    return nn.Sequential(*layers)


class FourierFeatures(nn.Module):
    r"""Map a scalar ``t`` of shape ``(B,)`` or ``(B, 1)`` to ``(B, 2 * n_freq)`` features.

    Frequencies :math:`\omega_j = \text{max\_freq}^{j/(n-1)}`, geometric from 1 to ``max_freq``.
    """

    def __init__(self, n_freq: int = 8, max_freq: float = 32.0):
        super().__init__()
        j = torch.arange(n_freq, dtype=torch.float32) / max(n_freq - 1, 1)
        self.register_buffer("freq", max_freq**j)

    def forward(self, t: Tensor) -> Tensor:
        """Features of ``t`` ``(B,)`` or ``(B, 1)``; returns ``(B, 2 * n_freq)``."""
        t = t.reshape(-1, 1).to(self.freq)  # (B, 1)
        angle = 2 * math.pi * t * self.freq  # (B, n_freq)
        return torch.cat([angle.sin(), angle.cos()], dim=-1)


class ConditionalMLP(nn.Module):
    """MLP :math:`f(x, t)` for ``x`` of shape ``(B, dim)`` and a scalar ``t`` per row ``(B,)``.

    ``t`` may also be a Python float or a 0-d tensor, broadcast to every row.
    """

    def __init__(self, dim: int, out_dim: int | None = None, hidden: int = 128, depth: int = 3,
                 n_freq: int = 8, max_freq: float = 32.0,
                 activation: type[nn.Module] = nn.SiLU):
        super().__init__()
        self.embed = FourierFeatures(n_freq, max_freq)
        self.net = mlp(dim + 2 * n_freq, out_dim or dim, hidden, depth, activation)

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Evaluate :math:`f(x, t)`: ``x`` ``(B, dim)``, ``t`` ``(B,)`` or scalar; returns ``(B, out_dim)``."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.numel() == 1:
            t = t.reshape(1).expand(x.shape[0])
        if t.reshape(-1).shape[0] != x.shape[0]:
            raise ValueError(f"t has {t.numel()} entries but x has {x.shape[0]} rows")
        return self.net(torch.cat([x, self.embed(t).to(x)], dim=-1))  # (B, out_dim)
