"""One training loop for every model of the book, and the interface every model shares.

Every generative model is a :class:`Model`: ``loss(batch)``, ``sample(n, generator)`` and, where it
has one, ``log_prob(x)``. :func:`minigen.train.fit` trains any of them: it builds one Adam optimizer per *player*
(one for most models; a critic and a generator for a GAN), a learning-rate schedule, clips
gradients, shows a progress bar, records the loss history and the wall and CPU seconds, and raises
:class:`NonFiniteLossError` naming the step (and the player) at which a loss stopped being finite.
Settings the caller leaves out come from the model's ``recipe``, the book's settings for that
family, so ``fit(model, target)`` trains any model with the book's recipe.

:func:`train` is the same loop with an optimizer the caller built: chapters use it while they
derive a method, before switching to the model objects.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .runtime import progress_enabled

__all__ = ["NonFiniteLossError", "Model", "FitResult", "fit", "loop", "train"]


class NonFiniteLossError(FloatingPointError):
    """Raised when a loss becomes NaN or infinite; ``.step`` is the step at which it happened."""

    def __init__(self, step: int, value: float, player: str | None = None):
        who = f" ({player})" if player else ""
        super().__init__(f"loss{who} became non-finite ({value}) at step {step}")
        self.step, self.value, self.player = step, value, player


class Model(nn.Module):
    r"""The interface of every generative model in minigen.

    - ``loss(batch)``: the training loss on a data batch ``(B, d)``, a 0-d tensor;
    - ``sample(n, generator=None)``: ``(n, d)`` samples, without an autograd graph, on the model's
      device and in its parameters' dtype;
    - ``log_prob(x)``: the model's log density at ``x`` ``(B, d)``, ``(B,)``, where it has one
      (flows exactly; diffusion and flow matching through the probability-flow ODE); the others
      raise ``NotImplementedError`` saying so.

    :func:`minigen.train.fit` trains it. A model with several players (a GAN) overrides :meth:`players` and
    :meth:`training_losses`; ``recipe`` holds the default settings of :func:`minigen.train.fit` for the model.
    """

    dim: int
    recipe: dict[str, Any]

    def loss(self, batch: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not define loss(batch)")

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not define sample(n, generator)")

    def log_prob(self, x: Tensor) -> Tensor:
        raise NotImplementedError(
            f"{type(self).__name__} has no tractable density: it only samples. Compare it with "
            "samples (minigen.metrics) instead of log_prob.")

    def prepare(self, batch: Tensor) -> None:
        """Called by :func:`minigen.train.fit` with the first training batch before any step (data scales, say);
        step 0 then trains on that same batch."""

    def players(self) -> dict[str, list[nn.Parameter]]:
        """The parameter groups, each with its own optimizer: by default one, ``"model"``."""
        return {"model": [p for p in self.parameters() if p.requires_grad]}

    def training_losses(self, next_batch: Callable[[], Tensor]) -> Iterator[tuple[str, Tensor]]:
        """The losses of one training step, in order, each with the player that minimises it."""
        yield "model", self.loss(next_batch())

    def after_step(self) -> None:
        """Called after every step (e.g. to update an exponential moving average)."""

    def _like(self) -> Tensor:
        """A parameter (or buffer): the device and dtype the model's tensors follow."""
        for t in self.parameters():
            return t
        for t in self.buffers():
            return t
        return torch.empty(0)

    def _check_batch(self, x: Tensor, name: str = "batch") -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.dim:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must have shape (B, {self.dim}), got {shape}")
        if x.shape[0] == 0:
            raise ValueError(f"{name} is empty")
        return x


DEFAULT_RECIPE: dict[str, Any] = dict(n_steps=2_000, batch_size=256, lr=1e-3, schedule="cosine",
                                      betas=(0.9, 0.999), clip_grad=None)


@dataclass
class FitResult:
    """What :func:`minigen.train.fit` returns: the loss history ``(n_steps, n_losses)``, the seconds, the settings."""

    losses: Tensor
    wall: float
    cpu: float
    settings: dict[str, Any] = field(default_factory=dict)


def _batches(data: Any, batch_size: int, like: Tensor,
             generator: torch.Generator | None) -> Callable[[], Tensor | tuple[Tensor, ...]]:
    """``data`` as a batch source: a tensor ``(N, d)`` (rows drawn with replacement), a tuple of
    tensors ``(N, d_1), (N, d_2), ...`` (the same rows of each drawn jointly, e.g. pairs
    ``(theta, x)``), an object with ``sample(n, generator)`` (a target of :mod:`minigen.data`), or a
    function ``n -> (n, d)``."""
    if isinstance(data, tuple) and data and all(isinstance(t, Tensor) for t in data):
        return _joint_batches(data, batch_size, like, generator)
    if isinstance(data, Tensor):
        if data.dim() != 2 or data.shape[0] == 0:
            raise ValueError(f"a data tensor must be (N, d) with N >= 1, got {tuple(data.shape)}")
        if not torch.isfinite(data).all():
            raise ValueError(f"the data hold {int((~torch.isfinite(data)).sum())} non-finite values")
        where = generator.device if generator is not None else data.device
        return lambda: data[torch.randint(0, len(data), (batch_size,), generator=generator,
                                          device=where).to(data.device)].to(like)
    if hasattr(data, "sample"):
        return lambda: data.sample(batch_size, generator).to(like)
    if callable(data):
        return lambda: data(batch_size).to(like)
    raise TypeError("data must be a tensor (N, d), a tuple of tensors (N, d_i), a target with "
                    f".sample(n, generator), or a function n -> (n, d); got {type(data).__name__}")


def _joint_batches(data: tuple[Tensor, ...], batch_size: int, like: Tensor,
                   generator: torch.Generator | None) -> Callable[[], tuple[Tensor, ...]]:
    """Batches of a tuple of tensors with equal first dimension ``N``: one set of row indices
    (drawn with replacement) per batch, applied to every tensor, so paired rows stay paired."""
    for i, t in enumerate(data):
        if t.dim() != 2 or t.shape[0] == 0:
            raise ValueError(f"data[{i}] must be (N, d) with N >= 1, got {tuple(t.shape)}")
        if t.shape[0] != data[0].shape[0]:
            raise ValueError(f"the data tensors must have equal length, got "
                             f"{[t.shape[0] for t in data]}")
        if not torch.isfinite(t).all():
            raise ValueError(f"data[{i}] holds {int((~torch.isfinite(t)).sum())} non-finite values")
    where = generator.device if generator is not None else data[0].device

    def draw() -> tuple[Tensor, ...]:
        idx = torch.randint(0, len(data[0]), (batch_size,), generator=generator, device=where)
        return tuple(t[idx.to(t.device)].to(like) for t in data)
    return draw


def _schedule(name: str | Callable, opt: torch.optim.Optimizer, n_steps: int, lr: float):
    if callable(name):
        return name(opt, n_steps)
    if name == "constant":
        return None
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, n_steps)
    if name == "one-cycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=n_steps)
    raise ValueError(f"schedule must be 'constant', 'cosine', 'one-cycle' or a function "
                     f"(optimizer, n_steps) -> scheduler; got {name!r}")


def fit(model: Model, data: Any, n_steps: int | None = None, *, batch_size: int | None = None,
        lr: float | Mapping[str, float] | None = None, schedule: str | Callable | None = None,
        betas: tuple[float, float] | None = None, clip_grad: float | None = None,
        generator: torch.Generator | None = None, callback: Callable[[int], None] | None = None,
        desc: str | None = None, progress: bool | None = None) -> FitResult:
    """Train ``model`` on ``data`` with Adam; every setting left ``None`` comes from ``model.recipe``.

    Args:
        data: a target with ``sample(n, generator)``, a tensor ``(N, d)`` of training points
            (minibatches drawn with replacement), a tuple of tensors ``(N, d_i)`` whose rows are
            drawn jointly (the model's ``loss`` then receives a tuple, e.g. ``(theta, x)`` pairs
            for a conditional flow), or a function ``n -> (n, d)``.
        lr: one learning rate, or one per player (``{"generator": ..., "critic": ...}``).
        schedule: ``"constant"``, ``"cosine"`` (decay to 0), ``"one-cycle"``, or a function
            ``(optimizer, n_steps) -> scheduler``.
        clip_grad: clip each player's gradient norm to this value.
        generator: the random generator of the data batches (the model's own noise follows
            torch's global generator).
        callback: ``callback(step)`` after every step.

    Returns a :class:`FitResult`: the losses ``(n_steps, n_losses)`` (one column per loss of a
    step), wall and CPU seconds, and the settings used.
    """
    cfg = {**DEFAULT_RECIPE, **getattr(model, "recipe", {})}
    given = dict(n_steps=n_steps, batch_size=batch_size, lr=lr, schedule=schedule, betas=betas,
                 clip_grad=clip_grad)
    cfg.update({k: v for k, v in given.items() if v is not None})
    for key in ("n_steps", "batch_size"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ValueError(f"{key} must be an int >= 1, got {cfg[key]!r}")
    if cfg["clip_grad"] is not None and not cfg["clip_grad"] > 0:
        raise ValueError(f"clip_grad must be positive, got {cfg['clip_grad']}")
    groups = model.players()
    rates = cfg["lr"] if isinstance(cfg["lr"], Mapping) else {k: cfg["lr"] for k in groups}
    if set(rates) != set(groups):
        raise ValueError(f"lr names the players {sorted(rates)}, the model has {sorted(groups)}")
    if any(not (r > 0 and math.isfinite(r)) for r in rates.values()):
        raise ValueError(f"learning rates must be positive and finite, got {rates}")
    like = model._like()
    fused = like.device.type in ("cpu", "cuda")  # one pass over the parameters per step
    opts = {k: torch.optim.Adam(ps, lr=rates[k], betas=cfg["betas"], fused=fused)
            for k, ps in groups.items()}
    scheds = [s for k, o in opts.items()
              if (s := _schedule(cfg["schedule"], o, cfg["n_steps"], rates[k])) is not None]
    draw = _batches(data, cfg["batch_size"], like, generator)
    first = [draw()]
    model.prepare(first[0])

    def next_batch() -> Tensor:  # the first batch is prepare()'s and step 0's: no draw is wasted
        return first.pop() if first else draw()

    def step_fn(step: int) -> list[float]:
        values = []
        for player, loss in model.training_losses(next_batch):
            value = float(loss.detach())
            if not math.isfinite(value):
                raise NonFiniteLossError(step, value, player if len(groups) > 1 else None)
            _update(loss, groups[player], opts[player], cfg["clip_grad"])
            values.append(value)
        for s in scheds:
            s.step()
        model.after_step()
        if callback is not None:
            callback(step)
        return values

    wall, cpu = time.perf_counter(), time.process_time()
    model.train()
    try:
        losses = loop(step_fn, cfg["n_steps"], desc=desc or type(model).__name__, progress=progress)
    finally:
        model.eval()
    return FitResult(losses, time.perf_counter() - wall, time.process_time() - cpu, cfg)


def _update(loss: Tensor, params: list[Tensor], opt: torch.optim.Optimizer,
            clip_grad: float | None) -> None:
    """One optimizer step on ``loss``; only ``params`` receive gradients."""
    opt.zero_grad(set_to_none=True)
    loss.backward(inputs=params)
    if clip_grad is not None:
        torch.nn.utils.clip_grad_norm_(params, clip_grad)
    opt.step()


def loop(step_fn: Callable[[int], float | Sequence[float] | Tensor], n_steps: int, *,
         desc: str = "training", progress: bool | None = None) -> Tensor:
    """Call ``step_fn(step)`` for ``step = 0 .. n_steps - 1``; return the losses, ``(n_steps, ...)``.

    ``step_fn`` returns one loss or a list of losses (e.g. critic and generator).
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
    """Minimise ``loss_fn(model, batch)`` for ``n_steps`` with a given optimizer; the losses ``(n_steps,)``.

    The loop of :func:`minigen.train.fit` for a network and a loss function that a chapter is still deriving.

    Args:
        batches: a function ``step -> batch`` (fresh samples each step) or one fixed tensor.
        clip_grad: if given, clip the gradient norm of the optimised parameters to this value.
    """
    params: list[Tensor] = [p for g in optimizer.param_groups for p in g["params"]]

    def step_fn(step: int) -> float:
        loss = loss_fn(model, batches(step) if callable(batches) else batches)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(step, float(loss.detach()))
        _update(loss, params, optimizer, clip_grad)
        if scheduler is not None:
            scheduler.step()
        return loss.item()

    model.train()
    try:
        return loop(step_fn, n_steps, desc=desc, progress=progress)
    finally:
        model.eval()


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """Call ``fn()`` once; return ``(result, wall seconds, CPU seconds)``.

    Wall time by ``time.perf_counter``, CPU time of this process by ``time.process_time``. On a
    shared, loaded machine the wall time is inflated by waiting; the CPU time is not (with one
    intra-op thread it stays at or below the wall time on an idle machine).
    """
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu

__all__ += ['timed']
