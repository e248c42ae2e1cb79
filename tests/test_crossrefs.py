"""The library and the book point at each other, and every cross-reference resolves.

- Every equation label a ``minigen`` docstring cites (``:eq:`label```, or ``{eq}`label``` in
  MyST style) is defined on a book page listed in ``_toc.yml``.
- Every ``{eq}``, ``{numref}`` and ``{ref}`` in the book pages resolves to a label the book defines:
  ``{eq}`` to an equation (``$$ ... $$ (label)`` or a ``{math}`` directive's ``:label:``),
  ``{numref}``/``{ref}`` to a figure, table, exercise or target (``:name:``, ``:label:``, a
  ``mystnb: figure: name:`` cell option, ``(label)=``).
- No label is defined twice.

This reads source text only (no build), so it runs in well under a second. The book build with
``-n`` reports the same problems, but only after executing every chapter.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import minigen

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = {"minigen.plot": "matplotlib", "minigen.ot": "ot"}  # modules with optional imports

# A role with its target: {eq}`label`, :eq:`label`, {numref}`Figure %s <label>`, ...
ROLE = re.compile(r"(?:\{(?P<myst>eq|numref|ref)\}|:(?P<rst>eq|numref|ref):)`(?P<body>[^`]+)`")
DOLLAR_LABEL = re.compile(r"\$\$\s*\((?P<label>[^()\s]+)\)\s*$")  # closing line of $$ ... $$ (label)
FENCE_OPEN = re.compile(r"^\s*(?P<fence>`{3,}|:{3,})\s*\{(?P<name>[\w:-]+)\}")
OPTION = re.compile(r"^\s*:(?P<key>label|name):\s*(?P<label>\S+)\s*$")
YAML_NAME = re.compile(r"^\s+(?:label|name):\s*(?P<label>[^\s#]+)\s*$")  # in a code cell's --- block
TARGET = re.compile(r"^\s*\((?P<label>[^()\s]+)\)=\s*$")


@dataclass(frozen=True)
class Site:
    """Where a label is defined or cited: ``file:line`` plus what is there."""

    where: str
    what: str = ""

    def __str__(self) -> str:
        return f"{self.where}{f' ({self.what})' if self.what else ''}"


def role_target(body: str) -> str:
    """``Figure %s <fig-x>`` -> ``fig-x``; ``eq-x`` -> ``eq-x``."""
    m = re.search(r"<([^<>]+)>\s*$", body)
    return (m.group(1) if m else body).strip()


def toc_pages() -> list[Path]:
    """The book's pages, in the order of ``_toc.yml`` (the pages the build includes)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    files = [toc["root"]]

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                files.append(e["file"])
            walk(e.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return [ROOT / f"{f}.md" for f in files if (ROOT / f"{f}.md").exists()]


def book_labels(pages: list[Path], root: Path = ROOT):
    """Equation labels and other (figure, exercise, target) labels, each with where defined."""
    equations: dict[str, list[Site]] = defaultdict(list)
    others: dict[str, list[Site]] = defaultdict(list)
    for page in pages:
        rel = page.relative_to(root)
        lines = page.read_text(encoding="utf-8").splitlines()
        state = None  # the directive whose options may follow, or "yaml" inside a cell's --- block
        for i, line in enumerate(lines):
            site = Site(f"{rel}:{i + 1}")
            if m := DOLLAR_LABEL.search(line):
                equations[m["label"]].append(site)
            if m := TARGET.match(line):
                others[m["label"]].append(site)
            if m := FENCE_OPEN.match(line):
                state = m["name"]
                if i + 1 < len(lines) and lines[i + 1].strip() == "---":
                    state = "yaml-start"  # options as YAML: a code cell's mystnb figure name
                continue
            if state == "yaml-start":
                state = "yaml"
            elif state == "yaml":
                if line.strip() == "---":
                    state = None
                elif m := YAML_NAME.match(line):
                    others[m["label"]].append(site)
            elif m := OPTION.match(line):
                (equations if state == "math" else others)[m["label"]].append(site)
            elif line.strip():
                state = None  # a directive's options end at its first line of content
    return equations, others


def public_objects(module):
    """The module itself, its public names (``__all__`` or not underscored) and their members."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, v in vars(module).items() if not n.startswith("_")
                 and getattr(v, "__module__", None) == module.__name__]
    yield module.__name__, module
    for name in names:
        obj = getattr(module, name, None)
        if obj is None or inspect.ismodule(obj):
            continue
        yield f"{module.__name__}.{name}", obj
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                if attr.startswith("_") and attr not in ("__init__", "__call__"):
                    continue
                member = getattr(member, "__func__", member)  # staticmethod / classmethod
                if isinstance(member, property):
                    member = member.fget
                if callable(member) or inspect.isfunction(member):
                    yield f"{module.__name__}.{name}.{attr}", member


def minigen_modules():
    """Every module of the package; optional ones are skipped only when their import is missing."""
    modules, skipped = [], []
    for info in pkgutil.walk_packages(minigen.__path__, "minigen."):
        try:
            modules.append(importlib.import_module(info.name))
        except ModuleNotFoundError as err:
            if info.name in OPTIONAL and err.name == OPTIONAL[info.name]:
                skipped.append(f"{info.name} (needs {err.name})")
                continue
            raise
    return [minigen, *modules], skipped


def docstring_citations():
    """``{label: [Site]}`` for every equation (and numref/ref) label cited in a docstring."""
    cited: dict[tuple[str, str], list[Site]] = defaultdict(list)
    modules, _ = minigen_modules()
    for module in modules:
        source = Path(module.__file__).relative_to(ROOT) if module.__file__ else module.__name__
        for qualname, obj in public_objects(module):
            doc = inspect.getdoc(obj) if not inspect.ismodule(obj) else obj.__doc__
            for m in ROLE.finditer(doc or ""):
                kind = m["myst"] or m["rst"]
                cited[(kind, role_target(m["body"]))].append(Site(str(source), qualname))
    return cited


def page_citations(pages: list[Path], root: Path = ROOT):
    """``{(role, label): [Site]}`` for every {eq}/{numref}/{ref} in the pages."""
    cited: dict[tuple[str, str], list[Site]] = defaultdict(list)
    for page in pages:
        rel = page.relative_to(root)
        for i, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            for m in ROLE.finditer(line):
                cited[(m["myst"] or m["rst"], role_target(m["body"]))].append(Site(f"{rel}:{i}"))
    return cited


def unresolved(cited, equations, others) -> list[str]:
    problems = []
    for (kind, label), sites in sorted(cited.items()):
        defined = equations if kind == "eq" else others
        if label in defined:
            continue
        hint = ""
        if kind == "eq" and label in others:
            hint = f"; it is a figure/exercise label at {others[label][0]}, cite it with {{numref}}"
        elif kind != "eq" and label in equations:
            hint = f"; it is an equation label at {equations[label][0]}, cite it with {{eq}}"
        where = ", ".join(str(s) for s in sites)
        problems.append(f"{kind} `{label}` cited at {where} is not defined in any book page "
                        f"listed in _toc.yml{hint}")
    return problems


class Book(tuple):
    """(pages, equation labels, other labels), with a short repr for tracebacks."""

    def __repr__(self) -> str:
        return f"<book: {len(self[0])} pages, {len(self[1])} equation labels, {len(self[2])} others>"


@pytest.fixture(scope="module")
def book():
    pages = toc_pages()
    assert pages, "_toc.yml lists no existing book page"
    return Book((pages, *book_labels(pages)))


def test_every_minigen_module_imports():
    modules, skipped = minigen_modules()
    assert len(modules) > 5, f"found only {[m.__name__ for m in modules]} in minigen"
    if skipped:
        pytest.skip(f"optional modules not importable here: {skipped}")


def test_docstring_equation_labels_exist_in_the_book(book):
    _, equations, others = book
    problems = unresolved(docstring_citations(), equations, others)
    assert not problems, "minigen docstrings cite labels the book does not define:\n" + "\n".join(problems)


def test_book_references_resolve(book):
    pages, equations, others = book
    problems = unresolved(page_citations(pages), equations, others)
    assert not problems, "unresolved references in the book:\n" + "\n".join(problems)


def test_no_label_is_defined_twice(book):
    _, equations, others = book
    dups = []
    for label, sites in sorted({**others, **equations}.items()):
        all_sites = equations.get(label, []) + others.get(label, [])
        if len(all_sites) > 1:
            dups.append(f"`{label}` defined at {', '.join(str(s) for s in all_sites)}")
    assert not dups, "labels defined more than once:\n" + "\n".join(dups)


# -- the checker itself: it finds each kind of definition and reports each kind of problem --------

SAMPLE = """\
# A page

$$
a = b
$$ (eq-sample-one)

$$ c = d $$ (eq-sample-two)

```{math}
:label: eq-sample-three

e = f
```

(sec-sample)=
## A section

```{code-cell} ipython3
---
tags: [hide-input]
mystnb:
  figure:
    caption: A figure.
    name: fig-sample
---
x = 1
```

```{exercise}
:label: ex-sample-1

Question.
```

See {eq}`eq-sample-one`, {numref}`Figure %s <fig-sample>`, {ref}`sec-sample`, {numref}`ex-sample-1`,
{eq}`eq-sample-missing` and {eq}`fig-sample`.
"""


def test_checker_finds_definitions_and_reports_missing_labels(tmp_path):
    page = tmp_path / "book" / "sample.md"
    page.parent.mkdir()
    page.write_text(SAMPLE, encoding="utf-8")
    equations, others = book_labels([page], root=tmp_path)
    assert set(equations) == {"eq-sample-one", "eq-sample-two", "eq-sample-three"}
    assert {"fig-sample", "ex-sample-1", "sec-sample"} <= set(others)
    problems = unresolved(page_citations([page], root=tmp_path), equations, others)
    assert len(problems) == 2, problems
    line = 1 + SAMPLE.splitlines().index(next(x for x in SAMPLE.splitlines() if "missing" in x))
    assert f"eq `eq-sample-missing` cited at book/sample.md:{line} is not defined" in problems[0]
    assert "eq `fig-sample`" in problems[1] and "cite it with {numref}" in problems[1]


def test_checker_reads_docstring_roles():
    doc = "Adam, :eq:`eq-opt-adam`; see also {eq}`eq-x` and :numref:`Figure %s <fig-y>`."
    found = [(m["myst"] or m["rst"], role_target(m["body"])) for m in ROLE.finditer(doc)]
    assert found == [("eq", "eq-opt-adam"), ("eq", "eq-x"), ("numref", "fig-y")]
