"""The execution cache shared by the chapter tests and the book build.

The chapter tests (nbval, through ``conftest.py``) execute every chapter; the build
(``execute_notebooks: cache`` in ``_config.yml``) renders the outputs of those executions instead
of running each chapter a second time. Both sides use a jupyter-cache folder:

- jupyter-cache keys a notebook on its code cells, their metadata and its kernelspec only. A
  chapter's results also depend on ``minigen/`` and on the libraries it runs on, so the folder
  itself is keyed on those (:func:`code_key`): ``<execute.cache>/<key>/``. A change to any
  ``minigen/*.py`` (or to torch, NumPy, ...) selects a new, empty folder, and the build executes
  every chapter again; the old folders are removed (:func:`prune`).
- The tests store a chapter only when every one of its code cells ran and passed
  (:func:`store`); a chapter whose run failed is removed from the cache (:func:`discard`), so
  the build executes it again and fails on the same cell.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import platform
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

DEFAULT_BASE = "_build/.jupyter_cache"
# Besides minigen/, what a chapter's outputs depend on (a new version may change a number).
KEY_PACKAGES = ("torch", "numpy", "scipy", "pot", "matplotlib", "jupytext", "myst-nb")
KEY_LENGTH = 16


def code_key(root: Path, packages: Sequence[str] = KEY_PACKAGES) -> str:
    """Hash of every ``minigen/**/*.py`` (path and bytes), Python's and ``packages``' versions, the book seed.

    Returns ``KEY_LENGTH`` hex digits. The same files give the same key on any machine.
    """
    digest = hashlib.sha256()
    package_dir = root / "minigen"
    files = sorted(package_dir.rglob("*.py"))
    if not files:
        raise FileNotFoundError(f"no minigen/*.py under {root}: cannot key the execution cache")
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    digest.update(f"python {platform.python_version()}\0".encode())
    # the book seed (MINIGEN_SEED) changes every figure: a run with another seed has its own cache
    digest.update(f"seed {os.environ.get('MINIGEN_SEED', '0').strip() or '0'}\0".encode())
    for name in packages:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = "absent"
        digest.update(f"{name} {version}\0".encode())
    return digest.hexdigest()[:KEY_LENGTH]


def cache_base(root: Path) -> Path:
    """The folder that ``execute.cache`` in ``_config.yml`` names (relative to ``root``)."""
    config = yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8")) or {}
    base = Path((config.get("execute") or {}).get("cache") or DEFAULT_BASE)
    return base if base.is_absolute() else root / base


def cache_dir(root: Path) -> Path:
    """The jupyter-cache folder for the current code: ``cache_base(root) / code_key(root)``."""
    return cache_base(root) / code_key(root)


def prune(current: Path) -> list[Path]:
    """Remove the sibling cache folders of ``current`` that other code keys made; return them."""
    removed = []
    if current.parent.is_dir():
        for other in current.parent.iterdir():
            if other != current and other.is_dir() and _is_key(other.name):
                shutil.rmtree(other, ignore_errors=True)
                removed.append(other)
    return removed


def _is_key(name: str) -> bool:
    return len(name) == KEY_LENGTH and all(c in "0123456789abcdef" for c in name)


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder/.lock`` (two pytest-xdist workers share one cache)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        try:
            import fcntl
        except ImportError:  # not POSIX: sqlite's own locking has to do
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_chapter(path: Path):
    """Read a MyST-Markdown chapter with myst-nb's own reader, as the build does."""
    from myst_nb.core.read import myst_nb_reader_plugin

    return myst_nb_reader_plugin(str(path))


def outputs_from_messages(messages: Sequence[dict[str, Any]]) -> list:
    """A cell's outputs from its kernel's IOPub messages, as nbclient would record them.

    Handles ``stream``, ``display_data``, ``execute_result`` and ``error`` (one output each, in
    order), ``clear_output`` (with ``wait``) and ``update_display_data`` (by ``display_id``).
    Consecutive ``stream`` messages of one name become one output: how the kernel splits a
    cell's printing into messages depends on timing, and the page should not.
    """
    from nbformat.v4 import output_from_msg

    outs: list = []
    by_display_id: dict[str, list[int]] = {}
    clear_pending = False
    for msg in messages:
        kind, content = msg["msg_type"], msg["content"]
        if kind == "clear_output":
            if content.get("wait"):
                clear_pending = True
            else:
                outs, by_display_id = [], {}
            continue
        if kind == "update_display_data":
            display_id = content.get("transient", {}).get("display_id")
            for i in by_display_id.get(display_id, []):
                outs[i]["data"], outs[i]["metadata"] = content["data"], content["metadata"]
            continue
        if kind not in ("stream", "display_data", "execute_result", "error"):
            continue
        if clear_pending:
            outs, by_display_id, clear_pending = [], {}, False
        if (kind == "stream" and outs and outs[-1].output_type == "stream"
                and outs[-1].name == content["name"]):
            outs[-1].text += content["text"]
            continue
        display_id = content.get("transient", {}).get("display_id")
        if display_id:
            by_display_id.setdefault(display_id, []).append(len(outs))
        outs.append(output_from_msg(msg))
    return outs


def store(root: Path, path: Path, cell_messages: Sequence[Sequence[dict[str, Any]]],
          sources: Sequence[str], language_info: dict | None, seconds: float) -> str | None:
    """Cache chapter ``path`` as executed: code cell ``i`` ran ``sources[i]`` and emitted
    ``cell_messages[i]`` (its IOPub messages). Call it only when every cell ran and passed.

    The notebook is myst-nb's reading of ``path`` with those outputs and execution counts
    1, 2, ...; returns ``None`` when stored, else why not (the code read by myst-nb differs
    from the code that ran, so the build could never match it).
    """
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    nb = read_chapter(path)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    if [cell.source for cell in code] != list(sources):
        return (f"{path.name}: the {len(sources)} code cells that ran differ from the "
                f"{len(code)} myst-nb reads")
    if len(cell_messages) != len(code):
        raise ValueError(f"{path.name}: {len(cell_messages)} cells' messages for "
                         f"{len(code)} code cells")
    for count, (cell, messages) in enumerate(zip(code, cell_messages), start=1):
        cell.execution_count = count
        cell.outputs = outputs_from_messages(messages)
        for out in cell.outputs:
            if out.output_type == "execute_result":
                out.execution_count = count
    if language_info:
        nb.metadata["language_info"] = language_info
    nb.metadata.pop("source_map", None)
    folder = cache_dir(root)
    with locked(folder):
        prune(folder)
        get_cache(str(folder)).cache_notebook_bundle(
            CacheBundleIn(nb, str(path), data={"execution_seconds": round(seconds, 2)}),
            check_validity=True, overwrite=True)
    return None


def discard(root: Path, path: Path) -> bool:
    """Remove chapter ``path`` (its current code) from the cache; return whether it was there."""
    from jupyter_cache import get_cache

    folder = cache_dir(root)
    if not (folder / "global.db").exists():
        return False
    with locked(folder):
        cache = get_cache(str(folder))
        try:
            record = cache.match_cache_notebook(read_chapter(path))
        except KeyError:
            return False
        cache.remove_cache(record.pk)
    return True
