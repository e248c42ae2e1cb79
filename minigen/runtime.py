"""Seeding, threads and device selection shared by every chapter."""
from __future__ import annotations

import ctypes
import os
import platform
import random

import numpy as np
import torch

__all__ = ["SEED_VARIABLE", "book_seed", "seed", "rng", "seed_all", "get_device", "setup", "keep_freed_memory", "progress_enabled"]


SEED_VARIABLE = "MINIGEN_SEED"
_STREAM_SPACING = 1_000
_book_seed: int | None = None


def book_seed() -> int:
    """The run's seed: the last one given to :func:`setup`, else ``$MINIGEN_SEED``, else 0.

    Every chapter calls ``minigen.setup()`` without a seed, so ``MINIGEN_SEED=3 jupyter-book build``
    (or ``benchmarks/seeds.py``) runs the whole book with another seed.
    """
    if _book_seed is not None:
        return _book_seed
    return _seed_from_environment()


def _seed_from_environment() -> int:
    text = os.environ.get(SEED_VARIABLE, "0").strip() or "0"
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{SEED_VARIABLE}={text!r} is not an integer seed") from None
    if not 0 <= value < 2**32 // _STREAM_SPACING:
        raise ValueError(f"{SEED_VARIABLE}={value} is outside 0..{2**32 // _STREAM_SPACING - 1}")
    return value


def seed(stream: int = 0) -> int:
    """The integer seed of random stream ``stream`` in this run: ``1000 * book_seed() + stream``.

    A chapter numbers its independent random streams 0, 1, 2, ... (training batches, the test
    sample, the metric's draws); with book seed 0 stream ``k`` is seeded with ``k``, and another
    book seed moves every stream at once. ``stream`` must lie in 0..999 so that runs never share one.
    """
    if not 0 <= stream < _STREAM_SPACING:
        raise ValueError(f"stream must be in 0..{_STREAM_SPACING - 1}, got {stream}")
    return _STREAM_SPACING * book_seed() + stream


def rng(stream: int = 0, device: torch.device | str | None = None) -> torch.Generator:
    """A fresh ``torch.Generator`` seeded with :func:`seed` ``(stream)`` (on ``device``, default CPU)."""
    return torch.Generator(device=device or "cpu").manual_seed(seed(stream))


def seed_all(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch, and return a fresh ``torch.Generator`` seeded with ``seed``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def get_device() -> torch.device:
    """CUDA when a GPU is present, otherwise the CPU. Nothing in minigen needs a GPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def setup(seed: int | None = None, threads: int | None = 1, keep_memory: bool | None = None) -> torch.device:
    """Seed everything, limit intra-op CPU threads, and return the device to use.

    ``seed=None`` takes the book seed from the environment variable ``MINIGEN_SEED`` (default 0);
    the seed becomes :func:`book_seed`, which :func:`seed` and :func:`rng` derive their streams from.

    One intra-op thread is the default because the book's models are small: with several threads
    on a busy machine OpenMP spin-waiting can slow a small MLP by an order of magnitude (the
    measurements are in ``benchmarks/``). Pass ``threads=None`` to keep torch's default.
    ``keep_memory=True`` also tells the C allocator to keep freed memory
    (:func:`keep_freed_memory`); it is off unless asked for, or unless the environment variable
    ``MINIGEN_KEEP_FREED_MEMORY=1`` is set (the book's build and tests set it), so that using
    minigen changes no process-wide allocator setting by default.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    if keep_memory is None:
        keep_memory = os.environ.get("MINIGEN_KEEP_FREED_MEMORY", "0") == "1"
    if keep_memory:
        keep_freed_memory()
    global _book_seed
    if seed is None:
        seed = _seed_from_environment()
    elif not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    _book_seed = seed
    seed_all(seed)
    return get_device()


def keep_freed_memory(keep_mb: int = 32) -> bool:
    """Let glibc's ``malloc`` reuse the memory of freed tensors instead of handing it back.

    By default glibc maps each block of a few MB afresh and unmaps it when freed, so every new
    activation of that size page-faults its memory in again (sampling 20,000 points through a
    64-unit MLP moves 5 MB activations: see ``benchmarks/`` for the effect). Blocks under
    ``keep_mb`` MB now come from the heap, and up to ``keep_mb`` MB of free heap is kept (32 MB is
    the largest threshold every 64-bit glibc accepts). Returns whether the setting took effect
    (only with glibc, as on most Linux systems); it changes no result.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    size = keep_mb << 20
    return bool(libc.mallopt(m_mmap_threshold, size)) and bool(libc.mallopt(m_trim_threshold, size))


def progress_enabled() -> bool:
    """Whether progress bars are shown: yes, unless ``MINIGEN_PROGRESS=0`` or ``CI`` is set.

    The book build and the test suite set ``MINIGEN_PROGRESS=0`` so that executed pages hold
    results rather than progress bars.
    """
    if os.environ.get("MINIGEN_PROGRESS", "1").lower() in ("0", "false", "no"):
        return False
    return not os.environ.get("CI")
