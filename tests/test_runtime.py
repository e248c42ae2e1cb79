"""Seeding, device selection and the figures report."""
import json

import torch

import minigen


def test_setup_makes_runs_reproducible():
    minigen.setup(seed=5)
    a = torch.randn(3)
    minigen.setup(seed=5)
    assert torch.equal(a, torch.randn(3))
    assert minigen.get_device().type in ("cpu", "cuda")


def test_report_prints_and_records(tmp_path, monkeypatch, capsys):
    path = tmp_path / "figures.jsonl"
    monkeypatch.setenv("MINIGEN_REPORT", str(path))
    minigen.runtime.report(ratio=1.23456, steps=10)
    assert "ratio  1.235" in capsys.readouterr().out
    assert json.loads(path.read_text()) == {"ratio": 1.23456, "steps": 10}


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


def test_keep_freed_memory_takes_effect_with_glibc():
    import platform

    assert minigen.runtime.keep_freed_memory() == (platform.libc_ver()[0] == "glibc")


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
