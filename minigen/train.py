"""One training loop for every chapter.

``train`` runs ``n_steps`` of: draw a batch, evaluate ``loss_fn(model, batch)``, check it is
finite, step the optimizer. ``loop`` is the same machinery for any step function (a GAN's
alternating critic and generator updates, say). Both return the loss history and raise
``NonFiniteLossError`` naming the step at which the loss stopped being finite.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .runtime import progress_enabled

__all__ = ["NonFiniteLossError", "loop", "train"]


class NonFiniteLossError(FloatingPointError):
    """Raised when a loss becomes NaN or infinite; ``.step`` is the step at which it happened."""

    def __init__(self, step: int, value: float):
        super().__init__(f"loss became non-finite ({value}) at step {step}")
        self.step, self.value = step, value


def loop(step_fn: Callable[[int], float | Sequence[float] | Tensor], n_steps: int, *,
         desc: str = "training", progress: bool | None = None) -> Tensor:
    """Call ``step_fn(step)`` for ``step = 0 .. n_steps - 1``; return the losses, ``(n_steps, ...)``.

    ``step_fn`` returns one loss or a tuple of losses (e.g. critic and generator).
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    show = progress_enabled() if progress is None else progress
    history = []
    bar = tqdm(range(n_steps), desc=desc, disable=not show, mininterval=0.5, leave=False)
    for step in bar:
        value = step_fn(step)
        values = torch.as_tensor(
            [float(v) for v in value] if isinstance(value, (tuple, list)) else float(value))
        if not torch.isfinite(values).all():
            bad = values[~torch.isfinite(values)].reshape(-1)[0]
            raise NonFiniteLossError(step, float(bad))
        history.append(values)
        if show and step % 50 == 0:
            bar.set_postfix(loss=f"{values.reshape(-1)[0].item():.4g}")
    return torch.stack(history)


def train(model: nn.Module, loss_fn: Callable[[nn.Module, Tensor], Tensor],
          optimizer: torch.optim.Optimizer, batches: Callable[[int], Tensor] | Tensor,
          n_steps: int, *, scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
          clip_grad: float | None = None, desc: str = "training",
          progress: bool | None = None) -> Tensor:
    """Minimise ``loss_fn(model, batch)`` for ``n_steps``; return the loss history ``(n_steps,)``.

    Args:
        batches: a function ``step -> batch`` (fresh samples each step) or one fixed tensor.
        clip_grad: if given, clip the gradient norm of the optimised parameters to this value.
    """
    params: Iterable[Tensor] = [p for g in optimizer.param_groups for p in g["params"]]

    def step_fn(step: int) -> float:
        batch = batches(step) if callable(batches) else batches
        loss = loss_fn(model, batch)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(step, float(loss.detach()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        return loss.item()

    model.train()
    history = loop(step_fn, n_steps, desc=desc, progress=progress)
    model.eval()
    return history


