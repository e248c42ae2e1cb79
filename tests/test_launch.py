"""Launch, download, cite: the chapters' clean notebooks, Binder's environment, the citation file,
the changelog, the version, and the scheduled workflow. Nothing here installs or downloads."""
from __future__ import annotations

import copy
import datetime
import os
import re
import sys
import tomllib
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import minigen_notebooks as mn  # noqa: E402

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
CHAPTERS = [doc for doc in mn.toc_docnames(ROOT) if mn.is_chapter(ROOT / f"{doc}.md")]
MYST_LEFTOVERS = re.compile(r"\{[a-z]+(:[a-z]+)*\}`|^\s*(`{3,}|:{3,})\{|\$\$\s*\([\w:-]+\)|^\([\w-]+\)=",
                            flags=re.M)


@pytest.fixture(scope="module")
def index() -> mn.BookIndex:
    return mn.BookIndex.from_sources(ROOT)


def test_every_chapter_is_found():
    notebooks = sorted(f"book/{p.stem}" for p in (ROOT / "book").glob("*.md")
                       if mn.is_chapter(p))
    assert len(notebooks) >= 11 and sorted(CHAPTERS) == notebooks, (CHAPTERS, notebooks)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_notebook_is_clean(chapter, index):
    """Valid nbformat, no MyST left in Markdown, install cell first, the chapter's code unchanged."""
    notebook = mn.convert(ROOT / f"{chapter}.md", index)
    nbformat.validate(notebook)
    markdown = [c.source for c in notebook.cells if c.cell_type == "markdown"]
    leftovers = [m.group(0) for text in markdown for m in MYST_LEFTOVERS.finditer(text)]
    assert not leftovers, f"{chapter}: MyST left in the Markdown cells: {leftovers[:5]}"
    first = notebook.cells[0]
    assert first.cell_type == "code"
    assert f'"minigen[ot,plot] @ git+https://github.com/minigen-book/minigen@v{VERSION}"' \
        in first.source, first.source
    code = [c.source for c in jupytext.read(ROOT / f"{chapter}.md").cells if c.cell_type == "code"]
    assert [c.source for c in notebook.cells[1:] if c.cell_type == "code"] == code
    assert "jupytext" not in notebook.metadata


def test_book_macros_are_written_out(index):
    notebook = mn.convert(ROOT / "book/04_mmd.md", index)
    markdown = "\n".join(c.source for c in notebook.cells if c.cell_type == "markdown")
    assert r"\operatorname{MMD}^2" in markdown
    assert not re.search(r"(?<!\\)\\(MMD|KL|E|R|N|d)(?![A-Za-z])", markdown)


def test_install_cell_is_valid_ipython():
    """IPython turns the %pip lines (also the indented ones) into Python that compiles."""
    from IPython.core.inputtransformer2 import TransformerManager

    source = mn.install_cell(VERSION, ROOT, ("myst-nb",))
    python = TransformerManager().transform_cell(source)
    compile(python, "<install cell>", "exec")
    assert python.count("run_line_magic('pip'") == 2, python
    assert "download.pytorch.org/whl/cpu" in source and "myst-nb" in source


def test_numbers_follow_the_book_order(index):
    """Equations and exercises are numbered 1, 2, ... through the pages of _toc.yml, in order."""
    order = {doc: i for i, doc in enumerate(mn.toc_docnames(ROOT))}
    for kind, items in [("equation", [(d, n) for d, n in index.equations.values()]),
                        ("exercise", [(d, n) for d, k, n in index.numbered.values()
                                      if k == "exercise"])]:
        numbers = [n for _, n in sorted(items, key=lambda dn: (order[dn[0]], dn[1]))]
        assert numbers == list(range(1, len(numbers) + 1)), kind
    text = (ROOT / "book/04_mmd.md").read_text(encoding="utf-8")
    first_mmd = re.search(r"\$\$\s*\(([\w-]+)\)", text).group(1)
    before = sum(1 for d, _ in index.equations.values() if order[d] < order["book/04_mmd"])
    assert index.equations[first_mmd] == ("book/04_mmd", before + 1)


def test_references_become_text_and_links(index):
    converter = mn._Converter(index, "book/04_mmd", {"gap": "'0.012'"}, {"E": r"\mathbb{E}"})
    label, (doc, number) = next(iter(index.equations.items()))
    assert converter.inline(f"{{eq}}`{label}`") == \
        f"[({number})]({index.url}{doc}.html#equation-{label})"
    assert converter.inline("{doc}`08_optimal_transport`") == \
        f"[{index.titles['book/08_optimal_transport']}]({index.url}book/08_optimal_transport.html)"
    assert converter.inline("{py:func}`~minigen.mmd.mmd2`") == \
        f"[`mmd2()`]({index.url}book/api.html#minigen.mmd.mmd2)"
    assert converter.inline("{glue:text}`gap` and `\\E` and $\\E x$") == \
        "0.012 and `\\E` and $\\mathbb{E} x$"
    exercise = next(k for k, v in index.numbered.items() if v[1] == "exercise")
    assert converter.inline(f"{{numref}}`{exercise}`").startswith(
        f"[Exercise {index.numbered[exercise][2]}](")
    with pytest.raises(KeyError, match="not-a-label"):
        converter.inline("{eq}`not-a-label`")
    with pytest.raises(ValueError, match="kbd"):
        converter.inline("{kbd}`Ctrl`")


def test_citations_are_author_year(index):
    from pybtex.database import parse_file

    bib = parse_file(str(ROOT / "book" / "references.bib"))
    converter = mn._Converter(index, "book/03_normalizing_flows", {}, {})
    keys = ["papamakarios2021normalizing", "wehenkel2019umnn", "cybenko1989approximation"]
    assert converter.inline(f"{{cite:p}}`{','.join(keys)}`") == \
        "(Papamakarios et al., 2021; Wehenkel and Louppe, 2019; Cybenko, 1989)"
    assert converter.inline("{cite:t}`szekely2013energy`") == "Székely and Rizzo (2013)"
    for key in keys:
        assert bib.entries[key].fields["year"] in index.entries[key]
    assert converter.cited == [*keys, "szekely2013energy"]  # in order, once each


def test_outputs_and_glue_values_come_from_the_executed_notebook(index):
    path = ROOT / "book/01_function_approximation.md"
    executed = jupytext.read(path)
    code = [c for c in executed.cells if c.cell_type == "code"]
    for n, cell in enumerate(code, start=1):
        cell.execution_count = n
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"cell {n}\n")]
    gluing = next(c for c in code if 'glue("fa_nll_gap"' in c.source)
    gluing.outputs.append(nbformat.v4.new_output(
        "display_data", data={"application/papermill.record/text/plain": "'0.123'"},
        metadata={"scrapbook": {"name": "fa_nll_gap",
                                "mime_prefix": "application/papermill.record/"}}))
    notebook = mn.convert(path, index, executed)
    got = [c for c in notebook.cells[1:] if c.cell_type == "code"]
    assert [c.outputs[0].text for c in got] == [f"cell {n}\n" for n in range(1, len(code) + 1)]
    assert [c.execution_count for c in got] == list(range(1, len(code) + 1))
    markdown = "\n".join(c.source for c in notebook.cells if c.cell_type == "markdown")
    assert "within 0.123 nats" in markdown.replace("\n", " ")

    stale = copy.deepcopy(executed)
    stale.cells[[i for i, c in enumerate(stale.cells) if c.cell_type == "code"][-1]].source += "\n1"
    assert not any(c.outputs for c in mn.convert(path, index, stale).cells if c.cell_type == "code")


def test_colab_url_points_at_the_notebooks_branch():
    assert mn.colab_url("book/04_mmd", ROOT) == ("https://colab.research.google.com/github/"
                                                 "minigen-book/minigen/blob/notebooks/book/04_mmd.ipynb")
    assert mn.book_url(ROOT) == "https://minigen-book.github.io/minigen/"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert mn.book_url(ROOT) in readme and "https://github.com/minigen-book/minigen" in readme


def test_extension_is_registered_and_pages_listed():
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    assert config["sphinx"]["local_extensions"]["minigen_notebooks"] == "book/_ext"
    assert "colab_url" not in config["launch_buttons"]  # the theme's would open the .md
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    reference = next(p for p in toc["parts"] if p["caption"] == "Reference")
    assert {"file": "book/execution"} in reference["chapters"]
    assert "```{nb-exec-table}" in (ROOT / "book/execution.md").read_text(encoding="utf-8")


# -- version, citation, changelog ----------------------------------------------------------------

def test_version_is_one_number_everywhere():
    import minigen

    assert re.fullmatch(r"\d+\.\d+\.\d+", VERSION)
    assert minigen.__version__ == VERSION
    assert mn.version(ROOT) == VERSION


CFF_KEYS = {"abstract", "authors", "cff-version", "commit", "contact", "date-released", "doi",
            "identifiers", "keywords", "license", "license-url", "message", "preferred-citation",
            "references", "repository", "repository-artifact", "repository-code", "title", "type",
            "url", "version"}


def test_citation_cff_has_the_structure_of_cff_1_2_0():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert set(cff) <= CFF_KEYS, f"keys CFF 1.2.0 does not define: {set(cff) - CFF_KEYS}"
    assert cff["cff-version"] == "1.2.0"
    for key in ("message", "title", "authors"):
        assert cff.get(key), f"CITATION.cff: required key {key!r} missing or empty"
    for author in cff["authors"]:
        assert author.get("name") or author.get("family-names"), author  # entity or person
    assert str(cff["version"]) == VERSION
    assert isinstance(cff["date-released"], (datetime.date, str))
    datetime.date.fromisoformat(str(cff["date-released"]))
    assert cff.get("type", "software") in ("software", "dataset")
    assert cff["repository-code"] == "https://github.com/minigen-book/minigen"
    assert cff["license"] == "MIT"


def test_changelog_has_a_section_per_version():
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    versions = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})$", text, flags=re.M)
    numbers = [tuple(map(int, v.split("."))) for v, _ in versions]
    assert versions[0][0] == VERSION and versions[-1][0] == "0.1.0"
    assert numbers == sorted(set(numbers), reverse=True)  # newest first, one section each
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert versions[0][1] == str(cff["date-released"])
    for name in ("minigen.train.Model", "fit", "standard error", "input checks", "executed once"):
        assert name.lower() in text.lower(), f"CHANGELOG.md does not mention {name}"


# -- Binder --------------------------------------------------------------------------------------

def _requirements(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name = re.split(r"[=<>~!\[ ;]", line)[0].lower().replace("_", "-")
            out[name] = line[len(name):].strip()
    return out


def test_binder_environment_declares_minigen_jupytext_and_pinned_torch():
    binder = ROOT / "binder"
    requirements = _requirements(binder / "requirements.txt")
    assert requirements.get("torch") == "==2.13.0", requirements.get("torch")
    assert "jupytext" in requirements
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in \
        (binder / "requirements.txt").read_text(encoding="utf-8")
    runtime = (binder / "runtime.txt").read_text(encoding="utf-8").strip()
    match = re.fullmatch(r"python-(\d+)\.(\d+)", runtime)
    assert match, f"binder/runtime.txt: {runtime!r} is not python-X.Y"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    minimum = tuple(map(int, re.search(r">=\s*(\d+)\.(\d+)", project["requires-python"]).groups()))
    assert tuple(map(int, match.groups())) >= minimum
    post_build = (binder / "postBuild").read_text(encoding="utf-8")
    assert post_build.startswith("#!/bin/bash") and "set -e" in post_build
    assert os.access(binder / "postBuild", os.X_OK)
    install = [line for line in post_build.splitlines()
               if "pip install" in line and not line.lstrip().startswith("#")]
    assert any(re.search(r"(-e|--editable)\s+\.(\s|$)", line) for line in install), install
    assert project["name"] == "minigen"
    needed = {re.split(r"[=<>~! \[]", d)[0] for d in project["dependencies"]}
    assert needed <= set(requirements), f"Binder lacks minigen's dependencies {needed - set(requirements)}"


# -- scheduled workflow --------------------------------------------------------------------------

def test_scheduled_workflow_builds_with_the_newest_dependencies():
    workflow = yaml.safe_load((ROOT / ".github/workflows/scheduled.yml").read_text(encoding="utf-8"))
    on = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as True
    crons = [entry["cron"] for entry in on["schedule"]]
    assert crons and all(len(cron.split()) == 5 for cron in crons), crons
    assert "workflow_dispatch" in on
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    assert all("uses" in step or "run" in step for step in steps)
    run = "\n".join(step.get("run", "") for step in steps)
    assert "--index-url https://download.pytorch.org/whl/cpu" in run
    assert "torch==" not in run and "-r requirements.txt" not in run
    assert "--upgrade" in run and "jupyter-book build" in run
