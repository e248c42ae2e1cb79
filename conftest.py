"""Collect the book's chapters (MyST-Markdown notebooks) as nbval tests.

nbval only collects ``.ipynb`` files; this hook hands each ``book/*.md`` that is a jupytext
notebook to nbval's collector, reading it with ``jupytext.read``. Every code cell becomes a test
item executed in one kernel per chapter (working directory: ``book/``), so a failing cell fails
the run with its traceback. Chapters hold their quality checks as ``assert`` cells.

It also starts every test function from the same global random state (``_seed_everything``).
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import jupytext
import nbval.plugin as nbval_plugin
import numpy as np
import pytest
import torch

ROOT = Path(__file__).parent
os.environ["MINIGEN_PROGRESS"] = "0"  # executed chapters show results, not progress bars
os.environ.setdefault("OMP_NUM_THREADS", "1")


class _JupytextFormat:
    """Stands in for the ``nbformat`` module inside nbval's collector: reads text notebooks."""

    def __getattr__(self, name: str):
        import nbformat

        return getattr(nbformat, name)

    @staticmethod
    def read(path: str, as_version: int = 4):
        return jupytext.read(path)


class MystNotebook(nbval_plugin.IPyNbFile):
    """nbval's notebook collector, reading a MyST-Markdown notebook through jupytext."""

    def collect(self):
        saved, nbval_plugin.nbformat = nbval_plugin.nbformat, _JupytextFormat()
        try:
            yield from super().collect()
        finally:
            nbval_plugin.nbformat = saved


def is_chapter(path: Path) -> bool:
    """A book page is a chapter (executable notebook) when its front matter names a kernel."""
    if path.suffix != ".md" or path.parent != ROOT / "book":
        return False
    head = path.read_text(encoding="utf-8")[:600]
    return head.startswith("---") and "kernelspec:" in head


def pytest_collect_file(file_path: Path, parent):
    if is_chapter(file_path):
        return MystNotebook.from_parent(parent, path=file_path)
    return None


def pytest_configure(config):
    # Chapters are executed (--nbval-lax semantics: text notebooks carry no stored outputs).
    config.option.nbval_lax = True


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    """Seed Python, NumPy and torch's global generators before each test function.

    Many tests build modules whose initial weights come from torch's global generator. Under
    ``pytest -n 2 --dist loadfile`` which tests ran earlier in the same worker (and so the state of
    that generator) depends on how files were distributed; without this a test could pass on one
    run and fail on the next with the same code. (Chapters seed themselves in their setup cell.)
    """
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
