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

The site (each checked in Chromium by ``tests/test_browser.py``):

- Adds ``book/_static/minigen-site.js`` (both sidebar buttons open their sidebar) and
  ``minigen-site.css`` (at a phone's width long names wrap, wide equations and tables scroll in
  their own box) to every page.
- Writes each inline script once: Sphinx 7.4 adds a script registered after the builder started
  (sphinx-thebe's ``const THEBE_JS_URL = ...``, sphinx-togglebutton's selector) a second time, and
  the second ``const`` stops with "Identifier 'THEBE_JS_URL' has already been declared".
- Labels the bibliography as the text cites, author-year (``bibtex_default_style: authoryear``).
- Keeps ``torch.nn.Module``'s docstrings off the API page: a method without a docstring of its
  own (it would show ``Module.forward``'s) is left out with a warning, and a class without one
  shows no inherited ``typing.Protocol`` text.
"""
from __future__ import annotations

import os
import shutil
import sys
from collections import Counter
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


# -- the site -----------------------------------------------------------------------------------------

STATIC = Path(__file__).resolve().parents[1] / "_static"  # book/_static


def _add_site_assets(app: Sphinx, config) -> None:
    config.html_static_path.append(str(STATIC))


def _drop_duplicate_scripts(app: Sphinx, pagename: str, templatename: str, context: dict,
                            doctree) -> None:
    """Keep the first of identical scripts (Sphinx 7.4 repeats inline ones, as ``filename=None``
    beside ``filename=''``; a repeated ``const`` is a SyntaxError in the browser)."""
    scripts = context.get("script_files")
    if not isinstance(scripts, list):
        return
    seen, kept = set(), []
    for js in scripts:
        attributes = getattr(js, "attributes", {})
        key = (getattr(js, "filename", js) or "", getattr(js, "priority", 0),
               tuple(sorted((k, str(v)) for k, v in attributes.items())))
        if key not in seen:
            seen.add(key)
            kept.append(js)
    scripts[:] = kept


def _register_author_year_style() -> None:
    """The pybtex style ``authoryear``: pybtex's ``plain`` (sorted by author, year, title) with
    labels "Ho et al., 2020" instead of numbers, the way the text cites (``author_year``)."""
    from pybtex.plugin import register_plugin
    from pybtex.richtext import Text
    from pybtex.style.formatting.plain import Style as PlainStyle
    from pybtex.style.labels import BaseLabelStyle

    def names(entry) -> str:
        people = entry.persons.get("author") or entry.persons.get("editor") or []
        last = [Text(*p.rich_last_names).render_as("text") for p in people]
        if not last:
            return entry.key
        if len(last) == 1:
            return last[0]
        return f"{last[0]} and {last[1]}" if len(last) == 2 else f"{last[0]} et al."

    class AuthorYearLabels(BaseLabelStyle):
        def format_labels(self, sorted_entries):
            labels = [f"{names(e)}, {e.fields.get('year', 'n.d.')}" for e in sorted_entries]
            count, seen = Counter(labels), Counter()
            for label in labels:  # the same authors twice in a year: 2021a, 2021b
                seen[label] += 1
                yield label + "abcdefghijklmnopqrstuvwxyz"[seen[label] - 1] if count[label] > 1 else label

    class AuthorYearStyle(PlainStyle):
        default_label_style = "authoryear"

    register_plugin("pybtex.style.labels", "authoryear", AuthorYearLabels, force=True)
    register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle, force=True)


def _docstring_from_outside(obj) -> str | None:
    """For a minigen class member with no docstring of its own: the class outside minigen whose
    docstring autodoc would show instead (``torch.nn.Module``), or None."""
    func = getattr(obj, "fget", obj)  # a property's getter
    if getattr(obj, "__doc__", None) or not hasattr(func, "__qualname__"):
        return None
    module = sys.modules.get(getattr(func, "__module__", None) or "")
    if module is None or not module.__name__.startswith("minigen"):
        return None
    owner = module
    for part in func.__qualname__.split(".")[:-1]:
        owner = getattr(owner, part, None)
    if not isinstance(owner, type):
        return None
    for base in owner.__mro__[1:]:
        member = vars(base).get(func.__name__)
        if member is not None and getattr(member, "__doc__", None):
            return None if base.__module__.startswith("minigen") else f"{base.__module__}.{base.__qualname__}"
    return None


def _skip_foreign_members(app: Sphinx, what: str, name: str, obj, skip: bool, options) -> bool | None:
    if skip or what != "class":
        return None
    source = _docstring_from_outside(obj)
    if source is None:
        return None
    LOGGER.warning(f"minigen: {getattr(obj, '__qualname__', name)} has no docstring of its own; the API "
                   f"page would show {source}.{name}'s, so it is left out: write one",
                   type="minigen", subtype="docstring")
    return True


def _drop_foreign_class_docstrings(app: Sphinx, what: str, name: str, obj, options,
                                   lines: list[str]) -> None:
    if what == "class" and isinstance(obj, type) and obj.__module__.startswith("minigen") \
            and obj.__doc__ is None:
        lines[:] = []  # inspect.getdoc would give typing.Protocol's (or nn.Module's) docstring


def _alt_text_from_captions(app: Sphinx, doctree, docname: str) -> None:
    """Give every image without alt text one: its figure's caption, else a generic description.

    Without it the HTML writer falls back to the image's file path, which a screen reader reads
    out as a hash. A figure made by a code cell carries its caption in ``mystnb: figure:``.
    """
    from docutils import nodes

    for image in doctree.findall(nodes.image):
        if image.get("alt") and image["alt"] != image.get("uri"):
            continue
        parent = image.parent
        while parent is not None and not isinstance(parent, nodes.figure):
            parent = parent.parent
        captions = list(parent.findall(nodes.caption)) if parent is not None else []
        text = " ".join(captions[0].astext().split()) if captions else ""
        image["alt"] = text or "Figure drawn by the code cell above"


def setup(app: Sphinx) -> dict:
    os.environ["MINIGEN_PROGRESS"] = "0"
    os.environ.setdefault("MINIGEN_KEEP_FREED_MEMORY", "1")  # as in conftest.py: see minigen.runtime.setup
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    app.connect("config-inited", _use_local_mathjax)
    app.connect("config-inited", _key_execution_cache)
    app.connect("doctree-read", _save_cached_outputs)
    app.connect("doctree-resolved", _alt_text_from_captions)
    app.connect("build-finished", _copy_mathjax)
    _register_author_year_style()
    app.setup_extension("sphinx.ext.autodoc")  # for its events below
    app.connect("config-inited", _add_site_assets)
    app.add_js_file("minigen-site.js")
    app.add_css_file("minigen-site.css")
    app.connect("html-page-context", _drop_duplicate_scripts, priority=900)
    app.connect("autodoc-skip-member", _skip_foreign_members)
    app.connect("autodoc-process-docstring", _drop_foreign_class_docstrings)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
