"""Sphinx extension local to the minigen book.

- Serves MathJax 3 from the site itself (the ``django-static-mathjax`` wheel carries its files),
  so that the math is typeset offline.
- Turns progress bars off in the executed chapters (``MINIGEN_PROGRESS=0``, inherited by the
  kernels) and pins one intra-op thread for them.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from sphinx.application import Sphinx

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


def setup(app: Sphinx) -> dict:
    os.environ["MINIGEN_PROGRESS"] = "0"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    app.connect("config-inited", _use_local_mathjax)
    app.connect("build-finished", _copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
