"""Sphinx extension local to the minigen book.

- Serves MathJax 3 from the site itself (the ``django-static-mathjax`` wheel carries its files),
  so that the math is typeset offline.
- Turns progress bars off in the executed chapters (``MINIGEN_PROGRESS=0``, inherited by the
  kernels) and pins one intra-op thread for them.
- With ``execute_notebooks: cache``, points myst-nb at the execution cache of the current code
  (``<execute.cache>/<key>``, the key a hash of ``minigen/*.py`` and the libraries' versions; see
  ``minigen_cache.py``), the folder the chapter tests fill. A change to ``minigen`` therefore
  selects an empty folder and every chapter is executed again; the new path is also a changed
  configuration value, so Sphinx re-reads every page of an earlier build.
- Writes the cached outputs into the executed notebook ``_build/jupyter_execute/<page>.ipynb``
  (the page's ``.ipynb`` download): myst-nb 1.4 renders a page from the cache but saves the
  notebook it read, without outputs.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.util import logging

import minigen_cache

LOGGER = logging.getLogger(__name__)

# The combined TeX + CHTML component, plus what it loads on demand: fonts, TeX extensions, the
# context menu and what the menu can switch on (the accessibility explorer needs input/mml.js and
# sre/mathmaps/*.json, the SVG renderer output/svg*). Checked in Chromium by tests/test_browser.py.
MATHJAX_PARTS = ["tex-chtml-full.js", "input", "output", "a11y", "sre", "ui", "adaptors"]


def _mathjax_source() -> Path:
    import mathjax  # from the django-static-mathjax wheel; needs no Django at run time

    return Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"


def _copy_mathjax(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    src, dst = _mathjax_source(), Path(app.outdir) / "_static" / "mathjax"
    for part in MATHJAX_PARTS:
        if (src / part).is_dir():
            shutil.copytree(src / part, dst / part, dirs_exist_ok=True)
        else:
            (dst / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / part, dst / part)


def _use_local_mathjax(app: Sphinx, config) -> None:
    config.mathjax_path = "mathjax/tex-chtml-full.js"  # relative to _static


def _key_execution_cache(app: Sphinx, config) -> None:
    if config.nb_execution_mode != "cache":
        return
    root = Path(app.srcdir)
    folder = minigen_cache.cache_dir(root)
    for stale in minigen_cache.prune(folder):
        LOGGER.info(f"minigen: removed the execution cache of other code, {stale}")
    config.nb_execution_cache_path = str(folder)
    LOGGER.info(f"minigen: execution cache keyed on minigen/*.py and library versions: {folder}")


def _save_cached_outputs(app: Sphinx, doctree) -> None:
    nb_config = getattr(app.env, "mystnb_config", None)
    if nb_config is None or nb_config.execution_mode != "cache":
        return
    path = Path(nb_config.output_folder, *f"{app.env.docname}.ipynb".split("/"))
    if not path.exists():  # not a notebook page
        return
    import nbformat
    from jupyter_cache import get_cache

    notebook = nbformat.read(path, as_version=4)
    try:
        _, notebook = get_cache(nb_config.execution_cache_path).merge_match_into_notebook(notebook)
    except KeyError:  # its execution failed (the build fails with it) or was never cached
        return
    nbformat.write(notebook, path)


def setup(app: Sphinx) -> dict:
    os.environ["MINIGEN_PROGRESS"] = "0"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    app.connect("config-inited", _use_local_mathjax)
    app.connect("config-inited", _key_execution_cache)
    app.connect("doctree-read", _save_cached_outputs)
    app.connect("build-finished", _copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
