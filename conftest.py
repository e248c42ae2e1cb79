"""Collect the book's chapters (MyST-Markdown notebooks) as nbval tests.

nbval only collects ``.ipynb`` files; this hook hands each ``book/*.md`` that is a jupytext
notebook to nbval's collector, reading it with ``jupytext.read``. Every code cell becomes a test
item executed in one kernel per chapter (working directory: ``book/``), so a failing cell fails
the run with its traceback. Chapters hold their quality checks as ``assert`` cells.

A chapter whose every code cell ran and passed is stored, with the outputs its kernel emitted, in
the execution cache that the book build reads (``book/_ext/minigen_cache.py``; keyed on the
chapter's code, ``minigen/*.py`` and the libraries' versions): the build then renders these
outputs instead of executing the chapter again. A chapter whose run failed is removed from it.

It also starts every test function from the same global random state (``_seed_everything``).
"""
from __future__ import annotations

import os
import random
import sys
import time
import warnings
from functools import partial
from pathlib import Path

import jupytext
import nbval.plugin as nbval_plugin
import numpy as np
import pytest
import torch

ROOT = Path(__file__).parent
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import minigen_cache  # noqa: E402
os.environ["MINIGEN_PROGRESS"] = "0"  # executed chapters show results, not progress bars
os.environ.setdefault("MINIGEN_KEEP_FREED_MEMORY", "1")  # glibc keeps freed activations (runtime.setup)
os.environ.setdefault("OMP_NUM_THREADS", "1")


class _JupytextFormat:
    """Stands in for the ``nbformat`` module inside nbval's collector: reads text notebooks."""

    def __getattr__(self, name: str):
        import nbformat

        return getattr(nbformat, name)

    @staticmethod
    def read(path: str, as_version: int = 4):
        return jupytext.read(path)


class MystCell(nbval_plugin.IPyNbCell):
    """nbval's cell item; records on its notebook which IOPub messages it produced and whether it
    passed (a skipped or interrupted cell counts as not passed)."""

    def runtest(self):
        start = len(self.parent.iopub)
        try:
            super().runtest()
        except BaseException:
            self.parent.failed = True
            raise
        self.parent.ran[self.cell_num] = (self.cell.source, self.parent.iopub[start:])


class MystNotebook(nbval_plugin.IPyNbFile):
    """nbval's notebook collector, reading a MyST-Markdown notebook through jupytext.

    After its last cell it stores the executed chapter in the build's execution cache when every
    code cell ran and passed, and removes the chapter from it when any cell failed.
    """

    def collect(self):
        saved, nbval_plugin.nbformat = nbval_plugin.nbformat, _JupytextFormat()
        try:
            for item in super().collect():
                yield MystCell.from_parent(self, name=item.name, cell_num=item.cell_num,
                                           cell=item.cell, options=item.options)
        finally:
            nbval_plugin.nbformat = saved

    def setup(self):
        self.iopub: list[dict] = []  # every IOPub message the cells read, in order
        self.ran: dict[int, tuple[str, list[dict]]] = {}  # cell number: (source, its messages)
        self.failed, self.started = False, time.perf_counter()
        super().setup()
        self.kernel.execute_cell_input = partial(_execute_as_notebook, self.kernel.kc)

    def get_kernel_message(self, timeout=None, stream="iopub"):
        msg = super().get_kernel_message(timeout=timeout, stream=stream)
        if stream == "iopub":
            self.iopub.append(msg)
        return msg

    def teardown(self):
        try:
            self._update_cache()
        finally:
            super().teardown()

    def _update_cache(self) -> None:
        n_code = sum(cell.cell_type == "code" for cell in self.nb.cells)
        if self.failed or self.timed_out:
            minigen_cache.discard(ROOT, self.path)
        elif len(self.ran) == n_code and self.kernel is not None and self.kernel.is_alive():
            cells = [self.ran[i] for i in range(n_code)]
            try:
                why_not = minigen_cache.store(
                    ROOT, self.path, [messages for _, messages in cells],
                    [source for source, _ in cells], _language_info(self.kernel),
                    time.perf_counter() - self.started)
            except Exception as err:  # the build then executes the chapter itself: slower, not wrong
                why_not = f"{type(err).__name__}: {err}"
            if why_not:
                warnings.warn(f"{self.path.name} not cached for the build: {why_not}", stacklevel=1)


def _execute_as_notebook(client, cell_input: str, allow_stdin: bool | None = None) -> str:
    """Send a cell to the kernel as Jupyter (and the build's nbclient) does: with
    ``store_history=True``. nbval sends ``False``, and then IPython, which looks for a trailing
    ``;`` in the history, shows the value of a cell like ``plot.curves(...);`` as well."""
    return client.execute(cell_input, store_history=True, allow_stdin=allow_stdin,
                          stop_on_error=False)


def _language_info(kernel) -> dict | None:
    """The kernel's ``language_info`` (nbclient stores it in the executed notebook's metadata)."""
    try:
        return kernel.kc.kernel_info(reply=True, timeout=30)["content"]["language_info"]
    except Exception:  # only the code highlighting of the rendered page depends on it
        return None


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
    runtime = sys.modules.get("minigen.runtime")
    if runtime is not None:  # a test's setup(seed=...) does not leak into the next
        runtime._book_seed = None
