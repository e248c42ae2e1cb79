"""Seeding, device selection, progress bars and the allocator setting."""

import torch

import minigen


def test_setup_seeds_torch_numpy_and_python_and_limits_threads(monkeypatch):
    import random

    import numpy as np

    def draws():
        return torch.randn(3), np.random.rand(3), random.random()

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    minigen.setup(seed=5)
    assert torch.get_num_threads() == 1  # one intra-op thread whatever it was before
    torch.set_num_threads(threads)
    a = draws()
    minigen.setup(seed=5)
    b = draws()
    minigen.setup(seed=6)
    c = draws()
    assert torch.equal(a[0], b[0]) and (a[1] == b[1]).all() and a[2] == b[2]
    assert not torch.equal(a[0], c[0]) and not (a[1] == c[1]).any() and a[2] != c[2]
    for cuda, expected in ((True, "cuda"), (False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        assert minigen.setup(seed=0).type == expected == minigen.get_device().type


def test_progress_can_be_switched_off(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("MINIGEN_PROGRESS", "0")
    assert not minigen.runtime.progress_enabled()
    monkeypatch.setenv("MINIGEN_PROGRESS", "1")
    assert minigen.runtime.progress_enabled()


def test_importing_minigen_does_not_import_matplotlib_or_pot():
    import subprocess
    import sys

    code = "import sys, minigen; print('matplotlib' in sys.modules, 'ot' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


_MALLOC_PROBE = """
import ctypes
import minigen

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]

def mapped_blocks_of_a_malloc():  # the block stays allocated: freeing it would move glibc's threshold
    before = libc.mallinfo2().hblks
    return libc.malloc(20 << 20), libc.mallinfo2().hblks - before

plain, n_plain = mapped_blocks_of_a_malloc()
kept = minigen.runtime.keep_freed_memory()
after, n_after = mapped_blocks_of_a_malloc()
print(n_plain, kept, n_after)
libc.free(plain), libc.free(after)
"""


def test_keep_freed_memory_serves_a_large_block_from_the_heap():
    """With glibc, a fresh process maps a 20 MB malloc with mmap (one more mapped block, counted by
    mallinfo2); after keep_freed_memory() the same malloc comes from the heap (none). A fresh
    process, because glibc raises its threshold by itself once such a block is freed."""
    import platform
    import subprocess
    import sys

    import pytest

    libc, version = platform.libc_ver()
    if libc != "glibc":
        assert minigen.runtime.keep_freed_memory() is False  # nothing to set elsewhere
        return
    if tuple(int(v) for v in version.split(".")[:2]) < (2, 33):
        pytest.skip("mallinfo2 needs glibc >= 2.33")
    out = subprocess.run([sys.executable, "-c", _MALLOC_PROBE], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "True", "0"]


def test_setup_changes_no_allocator_setting_unless_asked(monkeypatch):
    calls = []
    monkeypatch.setattr(minigen.runtime, "keep_freed_memory", lambda *a: calls.append(a) or True)
    monkeypatch.delenv("MINIGEN_KEEP_FREED_MEMORY", raising=False)
    minigen.setup(seed=0)
    assert calls == []
    minigen.setup(seed=0, keep_memory=True)
    monkeypatch.setenv("MINIGEN_KEEP_FREED_MEMORY", "1")
    minigen.setup(seed=0)
    assert len(calls) == 2


def test_book_seed_comes_from_the_environment_and_moves_every_stream(monkeypatch):
    monkeypatch.setattr(minigen.runtime, "_book_seed", None)
    monkeypatch.delenv("MINIGEN_SEED", raising=False)
    assert minigen.runtime.book_seed() == 0
    assert minigen.seed(3) == 3                     # seed 0: stream k is seeded with k, as before
    monkeypatch.setenv("MINIGEN_SEED", "2")
    minigen.setup()
    assert minigen.runtime.book_seed() == 2
    assert minigen.seed(3) == 2003
    a, b = minigen.rng(3), torch.Generator().manual_seed(2003)
    assert torch.equal(torch.randn(4, generator=a), torch.randn(4, generator=b))
    assert not torch.equal(torch.randn(4, generator=minigen.rng(3)), torch.randn(4, generator=minigen.rng(4)))
    minigen.setup(seed=1)                           # an explicit seed wins over the environment
    assert minigen.seed(0) == 1000


def test_bad_seeds_and_streams_are_named(monkeypatch):
    import pytest

    monkeypatch.setattr(minigen.runtime, "_book_seed", None)
    monkeypatch.setenv("MINIGEN_SEED", "three")
    with pytest.raises(ValueError, match="MINIGEN_SEED='three' is not an integer"):
        minigen.setup()
    monkeypatch.setenv("MINIGEN_SEED", "0")
    with pytest.raises(ValueError, match="stream must be in 0..999, got 1000"):
        minigen.seed(1000)
    with pytest.raises(ValueError, match="non-negative int"):
        minigen.setup(seed=-1)
