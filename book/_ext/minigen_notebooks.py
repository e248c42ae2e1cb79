"""Clean Jupyter notebooks of the chapters, for Colab and for the download button.

A chapter is a MyST-Markdown notebook (``book/NN_name.md``). Jupyter and Colab render plain
Markdown only, so :func:`convert` turns a chapter into an ``.ipynb`` that reads well anywhere:

- the first cell installs ``minigen`` at the book's version (``pyproject.toml``), and PyTorch's
  CPU build when torch is missing;
- citations become author-year text (``references.bib``, read with pybtex) and a list of
  references at the end; ``{eq}`` references become the equation's number in the book, linked to
  the online page; ``{doc}``, ``{ref}`` and ``{numref}`` become links with the book's text
  ("Exercise 7", "Fig. 3", the chapter's title); ``{py:func}`` and friends become code linked to
  the API page; ``{glue:text}`` becomes the value the build computed (or the glued name);
- directives (``{admonition}``, ``{exercise}``, ...) become block quotes with a bold title,
  labelled display math gets ``\\tag{N}``, and the book's MathJax macros (``\\E``, ``\\KL``, ...)
  are written out, since neither Jupyter nor Colab knows them;
- code cells are the chapter's, unchanged; a figure's caption follows its cell.

Equations, figures and exercises are numbered through the whole book in the order of
``_toc.yml``, as Sphinx numbers them (:class:`BookIndex`); the extension checks these numbers
against Sphinx's own on every build and warns on a difference.

As a Sphinx extension it writes ``<html>/notebooks/<page>.ipynb`` for every chapter (with the
outputs of ``_build/jupyter_execute/<page>.ipynb`` when the build has them), puts the same file at
``<html>/_sources/<page>.ipynb`` (what the theme's download button serves), adds a Colab button
that opens ``book/<chapter>.ipynb`` on the ``notebooks`` branch of the repository (filled from
``<html>/notebooks`` at release time; see README.md), and shows the version in the footer.
``python book/_ext/minigen_notebooks.py OUT`` writes the notebooks without Sphinx.
"""
from __future__ import annotations

import copy
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[2]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
COLAB = "https://colab.research.google.com/github"
NOTEBOOK_DIR = "notebooks"  # under the HTML output, and the branch Colab opens
ROLE = re.compile(r"\{([a-z]+(?::[a-z]+)*)\}`([^`]*)`")
FENCE = re.compile(r"^(`{3,}|:{3,})\{([\w:-]+)\}\s*(.*)$")
PLAIN_FENCE = re.compile(r"^(`{3,}|~{3,})")
MATH_LABEL = re.compile(r"^(.*?)\$\$\s*\(([\w:-]+)\)\s*$")
NUMFIG_FORMAT = {"figure": "Fig. %s", "exercise": "Exercise %s"}
PY_ROLES = {"func", "meth", "class", "mod", "obj", "attr", "data", "exc", "const"}


def version(root: Path = ROOT) -> str:
    """The package version from ``pyproject.toml`` (``[project] version``)."""
    import tomllib

    return tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]


def _config(root: Path) -> dict:
    return yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8")) or {}


def repository(root: Path = ROOT) -> tuple[str, str]:
    """``(org, repo)`` of ``repository.url`` in ``_config.yml`` (a GitHub URL)."""
    url = _config(root)["repository"]["url"].rstrip("/")
    match = re.fullmatch(r"https://github\.com/([^/]+)/([^/]+?)(\.git)?", url)
    if match is None:
        raise ValueError(f"repository.url {url!r} in _config.yml is not https://github.com/ORG/REPO")
    return match.group(1), match.group(2)


def book_url(root: Path = ROOT) -> str:
    """The published book, GitHub Pages of the repository: ``https://ORG.github.io/REPO/``."""
    org, repo = repository(root)
    return f"https://{org}.github.io/{repo}/"


def colab_url(pagename: str, root: Path = ROOT, branch: str = NOTEBOOK_DIR) -> str:
    """Colab's address of ``<pagename>.ipynb`` on ``branch`` of the repository."""
    org, repo = repository(root)
    return f"{COLAB}/{org}/{repo}/blob/{branch}/{pagename}.ipynb"


def toc_docnames(root: Path = ROOT) -> list[str]:
    """Every page of ``_toc.yml``, root first, in reading order (Sphinx numbers in this order)."""
    toc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8"))
    names = [toc["root"]]

    def walk(entries: list) -> None:
        for entry in entries or []:
            if "file" in entry:
                names.append(entry["file"])
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    walk(toc.get("parts"))
    walk(toc.get("chapters"))
    return names


@dataclass
class BookIndex:
    """What a chapter's references point at: numbers, titles and citations of the whole book.

    ``equations``: label -> (docname, number); ``numbered``: label -> (docname, figtype, number)
    for figures (a code cell's ``mystnb.figure.name``) and exercises; ``titles``: docname -> first
    heading; ``authors``: bib key -> (author-year names, year); ``entries``: bib key -> Markdown.
    """

    root: Path
    url: str
    version: str
    equations: dict[str, tuple[str, int]] = field(default_factory=dict)
    numbered: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    titles: dict[str, str] = field(default_factory=dict)
    authors: dict[str, tuple[str, str]] = field(default_factory=dict)
    entries: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_sources(cls, root: Path = ROOT) -> "BookIndex":
        index = cls(root, book_url(root), version(root))
        counts = {"equation": 0, "figure": 0, "exercise": 0}
        for doc in toc_docnames(root):
            text = (root / f"{doc}.md").read_text(encoding="utf-8")
            heading = re.search(r"^# (.+)$", text, flags=re.M)
            index.titles[doc] = heading.group(1).strip() if heading else doc
            for kind, label in _numbered_labels(text):
                counts[kind] += 1
                if kind == "equation":
                    index.equations[label] = (doc, counts[kind])
                else:
                    index.numbered[label] = (doc, kind, counts[kind])
        index._read_bibliography(root / "book" / "references.bib")
        return index

    def _read_bibliography(self, path: Path) -> None:
        from pybtex.database import parse_file
        from pybtex.plugin import find_plugin
        from pybtex.richtext import Text

        bib = parse_file(str(path))
        style = find_plugin("pybtex.style.formatting", "plain")()
        for key, entry in bib.entries.items():
            last = [Text.from_latex(" ".join(p.last_names)).render_as("text")
                    for p in entry.persons.get("author") or entry.persons.get("editor", [])]
            names = (last[0] if len(last) == 1 else " and ".join(last) if len(last) == 2
                     else f"{last[0]} et al.")
            self.authors[key] = (names, entry.fields.get("year", "n.d."))
        for formatted in style.format_entries(bib.entries.values()):
            self.entries[formatted.key] = formatted.text.render_as("markdown").replace("\n", " ")

    def page(self, doc: str, anchor: str = "") -> str:
        return f"{self.url}{doc}.html" + (f"#{anchor}" if anchor else "")


def _numbered_labels(text: str) -> list[tuple[str, str]]:
    """(kind, label) of the labelled equations, captioned figures and exercises, in order."""
    found, fence, lines = [], None, text.splitlines()
    open_directives: list[str] = []  # fences of the directives (admonitions, ...) we are inside
    for i, line in enumerate(lines):
        if fence is not None:
            fence = None if line.strip() == fence else fence
            continue
        if open_directives and line.strip() == open_directives[-1]:
            open_directives.pop()  # the closing fence of an admonition, not a new code block
            continue
        directive = FENCE.match(line)
        plain = None if directive else PLAIN_FENCE.match(line)
        if directive and directive.group(2) not in ("code-cell", "exercise"):
            open_directives.append(directive.group(1))
        if directive and directive.group(2) == "code-cell":
            figure = (_front_matter(lines[i + 1:]).get("mystnb") or {}).get("figure") or {}
            if figure.get("caption") and figure.get("name"):
                found.append(("figure", figure["name"]))
        elif directive and directive.group(2) == "exercise":
            options = _options(lines[i + 1:])
            if "nonumber" not in options:
                found.append(("exercise", options.get("label", "")))
        elif not directive and not plain and (math := MATH_LABEL.match(line)) is not None:
            found.append(("equation", math.group(2)))
        if directive and directive.group(2) in ("code-cell", "exercise") or plain:
            fence = (directive or plain).group(1)  # skip the body (exercises hold no numbers)
    return found


def _front_matter(lines: list[str]) -> dict:
    """A directive's YAML options between ``---`` lines, or {} when it has none."""
    if not lines or lines[0].strip() != "---":
        return {}
    end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    return yaml.safe_load("\n".join(lines[1:end])) or {}


def _options(lines: list[str]) -> dict[str, str]:
    options = {}
    for line in lines:
        match = re.match(r"^:([\w-]+):\s*(.*)$", line)
        if match is None:
            break
        options[match.group(1)] = match.group(2).strip()
    return options


# -- Markdown ------------------------------------------------------------------------------------

def _split_target(content: str) -> tuple[str | None, str]:
    match = re.fullmatch(r"(.*?)\s*<([^<>]+)>", content.strip(), flags=re.S)
    return (match.group(1), match.group(2)) if match else (None, content.strip())


class _Converter:
    """MyST Markdown of one page -> plain Markdown (see the module docstring)."""

    def __init__(self, index: BookIndex, doc: str, glue: dict[str, str], macros: dict[str, str]):
        self.index, self.doc, self.glue, self.cited = index, doc, glue, []
        names = "|".join(sorted(map(re.escape, macros), key=len, reverse=True))
        self.macro = re.compile(rf"(?<!\\)\\({names})(?![A-Za-z])") if names else None
        self.macros = macros

    def markdown(self, text: str) -> str:
        out, lines, i = [], text.splitlines(), 0
        while i < len(lines):
            line = lines[i]
            directive, plain = FENCE.match(line), PLAIN_FENCE.match(line)
            if directive or plain:
                fence = (directive or plain).group(1)
                end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == fence),
                           len(lines))
                body = lines[i + 1:end]
                out += self.directive(directive, body) if directive else [line, *body, fence]
                i = end + 1
                continue
            if re.fullmatch(r"\([\w:-]+\)=\s*", line) or re.match(r"^%", line):
                i += 1  # a target or a MyST comment
                continue
            math = MATH_LABEL.match(line)
            if math is not None:
                number = self.equation_number(math.group(2))
                line = f"{math.group(1)}\\tag{{{number}}}\n$$" if math.group(1).strip() \
                    else f"\\tag{{{number}}}\n$$"
            out.append(self.inline(line))
            i += 1
        return "\n".join(out)

    def inline(self, line: str) -> str:
        """Roles replaced, macros written out; code spans left as they are."""
        out, last = [], 0
        for match in re.finditer(rf"{ROLE.pattern}|`+[^`]*`+", line):
            out.append(self.expand(line[last:match.start()]))
            out.append(self.role(match) if match.group(1) else match.group(0))
            last = match.end()
        return "".join(out) + self.expand(line[last:])

    def expand(self, text: str) -> str:
        return self.macro.sub(lambda m: self.macros[m.group(1)], text) if self.macro else text

    def directive(self, match: re.Match, body: list[str]) -> list[str]:
        name, argument = match.group(2), match.group(3).strip()
        if name in ("solution-end", "exercise-end"):
            return []
        options = _front_matter(body)
        if options:
            start = next(i for i in range(1, len(body)) if body[i].strip() == "---") + 1
        else:
            options = _options(body)
            start = len(options)
        inner = self.markdown("\n".join(body[start:]).strip("\n"))
        if name == "math":
            number = self.equation_number(options["label"]) if "label" in options else None
            tag = f" \\tag{{{number}}}" if number else ""
            return ["$$", inner + tag, "$$"]
        if name == "exercise":
            number = self.numbered_text(options["label"]) if "label" in options else "Exercise"
            title = f"**{number}** ({self.inline(argument)})" if argument else f"**{number}**"
        elif name in ("solution", "solution-start"):
            title = f"**Solution to {self.numbered_text(argument)}**"
            if name == "solution-start":  # the solution is the text up to {solution-end}
                return [title]
        else:  # admonition, note, tip, warning, ...
            title = f"**{self.inline(argument) or name.capitalize()}**"
        return [f"> {title}", ">"] + [f"> {line}".rstrip() for line in inner.splitlines()]

    def equation_number(self, label: str) -> int:
        if label not in self.index.equations:
            raise KeyError(f"{self.doc}: equation label {label!r} is not defined in the book")
        return self.index.equations[label][1]

    def numbered_text(self, label: str) -> str:
        if label not in self.index.numbered:
            raise KeyError(f"{self.doc}: no figure or exercise labelled {label!r} in the book")
        _, kind, number = self.index.numbered[label]
        return NUMFIG_FORMAT[kind] % number

    def role(self, match: re.Match) -> str:
        name, content = match.group(1), match.group(2)
        domain, _, kind = name.rpartition(":")
        if name.startswith("cite"):
            return self.cite(kind, content)
        text, target = _split_target(content)
        if name == "eq":
            doc = self.index.equations.get(target, (self.doc,))[0]
            number = self.equation_number(target)
            return f"[{text or f'({number})'}]({self.index.page(doc, f'equation-{target}')})"
        if name in ("numref", "ref"):
            if target in self.index.numbered:
                doc = self.index.numbered[target][0]
                number = self.numbered_text(target)
                label = (text.replace("%s", number.split()[-1]) if text and name == "numref"
                         else text or number)
                return f"[{label}]({self.index.page(doc, target)})"
            raise KeyError(f"{self.doc}: {{{name}}} target {target!r} is not a figure or exercise")
        if name == "doc":
            doc = target.lstrip("/") if target.startswith("/") else \
                str(Path(self.doc).parent / target).replace("\\", "/")
            if doc not in self.index.titles:
                raise KeyError(f"{self.doc}: {{doc}} target {target!r} is not a page of _toc.yml")
            return f"[{text or self.index.titles[doc]}]({self.index.page(doc)})"
        if domain == "py" and kind in PY_ROLES:
            shown = text or (target[1:].rsplit(".", 1)[-1] if target.startswith("~") else target)
            shown += "()" if kind in ("func", "meth") and not text else ""
            return f"[`{shown}`]({self.index.page('book/api', target.lstrip('~'))})"
        if name.startswith("glue"):
            key, _, spec = content.partition(":")
            if key in self.glue:
                from myst_nb.core.variables import format_plain_text

                return format_plain_text(self.glue[key], spec)
            return f"`{key}` (computed by the code above)"
        if name == "math":
            return f"${self.expand(content)}$"
        raise ValueError(f"{self.doc}: no plain-Markdown form for the MyST role {{{name}}}")

    def cite(self, kind: str, content: str) -> str:
        keys = [k.strip() for k in content.split(",") if k.strip()]
        missing = [k for k in keys if k not in self.index.authors]
        if missing:
            raise KeyError(f"{self.doc}: citation keys {missing} are not in references.bib")
        self.cited += [k for k in keys if k not in self.cited]
        names = [self.index.authors[k] for k in keys]
        if kind == "t":
            return "; ".join(f"{who} ({year})" for who, year in names)
        return "(" + "; ".join(f"{who}, {year}" for who, year in names) + ")"


# -- Notebooks -----------------------------------------------------------------------------------

def install_cell(book_version: str, root: Path = ROOT, extra: tuple[str, ...] = ()) -> str:
    """The first cell: ``%pip install "minigen[ot,plot] @ git+<repo>@v<version>"``."""
    org, repo = repository(root)
    spec = f"minigen[ot,plot] @ git+https://github.com/{org}/{repo}@v{book_version}"
    packages = " ".join([f'"{spec}"', *extra])
    return "\n".join([
        f"# Installs minigen {book_version}, the version of the book this notebook comes from",
        "# (Colab, or any Python without it), and PyTorch's CPU build when torch is missing.",
        "import importlib.metadata, importlib.util",
        "if importlib.util.find_spec(\"torch\") is None:",
        f"    %pip install -q torch --index-url {CPU_INDEX}",
        "try:",
        f"    _have = importlib.metadata.version(\"minigen\") == \"{book_version}\"",
        "except importlib.metadata.PackageNotFoundError:",
        "    _have = False",
        "if not _have:",
        f"    %pip install -q {packages}",
    ])


def glue_values(executed: nbformat.NotebookNode | None) -> dict[str, str]:
    """``glue`` name -> its ``text/plain`` value, from an executed notebook's outputs."""
    values = {}
    for cell in (executed.cells if executed is not None else []):
        for output in cell.get("outputs", []):
            meta = output.get("metadata", {}).get("scrapbook")
            if meta:
                data = {k[len(meta.get("mime_prefix", "")):]: v for k, v in output["data"].items()}
                if "text/plain" in data:
                    values[meta["name"]] = data["text/plain"]
    return values


def convert(path: Path, index: BookIndex,
            executed: nbformat.NotebookNode | None = None) -> nbformat.NotebookNode:
    """The chapter ``path`` (MyST-Markdown notebook) as a plain ``.ipynb`` (module docstring).

    ``executed``: the build's executed notebook of this page; its outputs are copied onto the
    code cells when its code is the chapter's, cell for cell.
    """
    import jupytext

    path = Path(path).resolve()
    doc = path.relative_to(index.root.resolve()).with_suffix("").as_posix()
    source = jupytext.read(path)
    macros = ((_config(index.root).get("sphinx") or {}).get("config", {})
              .get("mathjax3_config", {}).get("tex", {}).get("macros", {}))
    converter = _Converter(index, doc, glue_values(executed), macros)
    code = [c for c in source.cells if c.cell_type == "code"]
    ran = [c for c in (executed.cells if executed is not None else []) if c.cell_type == "code"]
    if ran and [c.source for c in ran] != [c.source for c in code]:
        ran = []  # another version of the chapter: no outputs rather than wrong ones
    uses_glue = any("myst_nb" in c.source for c in code)
    cells = [nbformat.v4.new_code_cell(install_cell(index.version, index.root,
                                                    ("myst-nb",) if uses_glue else ()))]
    for cell in source.cells:
        if cell.cell_type == "markdown":
            cells.append(nbformat.v4.new_markdown_cell(converter.markdown(cell.source).strip("\n")))
            continue
        new = nbformat.v4.new_code_cell(cell.source, metadata=copy.deepcopy(dict(cell.metadata)))
        if ran:
            done = ran[len([c for c in cells if c.cell_type == "code"]) - 1]
            new.outputs, new.execution_count = copy.deepcopy(done.outputs), done.execution_count
        cells.append(new)
        figure = cell.metadata.get("mystnb", {}).get("figure", {})
        if figure.get("caption"):
            caption = converter.markdown(str(figure["caption"]))
            number = converter.numbered_text(figure["name"]) if "name" in figure else "Figure"
            cells.append(nbformat.v4.new_markdown_cell(f"**{number}.** {caption}"))
    if converter.cited:
        cells.append(nbformat.v4.new_markdown_cell("## References\n\n" + "\n".join(
            f"- {index.entries[key]}" for key in converter.cited)))
    metadata = {k: v for k, v in source.metadata.items() if k != "jupytext"}
    metadata["language_info"] = {"name": "python"}
    notebook = nbformat.v4.new_notebook(cells=cells, metadata=metadata)
    nbformat.validate(notebook)
    return notebook


def is_chapter(path: Path) -> bool:
    """A MyST-Markdown notebook (a kernelspec in its front matter)."""
    return "kernelspec:" in Path(path).read_text(encoding="utf-8")[:600]


def write_all(out: Path, root: Path = ROOT) -> list[Path]:
    """Convert every chapter of ``_toc.yml`` into ``out/<page>.ipynb`` (no outputs)."""
    index, written = BookIndex.from_sources(root), []
    for doc in toc_docnames(root):
        if is_chapter(root / f"{doc}.md"):
            target = Path(out) / f"{doc}.ipynb"
            target.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(convert(root / f"{doc}.md", index), target)
            written.append(target)
    return written


# -- Sphinx extension ----------------------------------------------------------------------------

def check_numbers(index: BookIndex, env) -> list[str]:
    """Where :class:`BookIndex`'s numbers differ from those Sphinx gave (``env.toc_fignumbers``).

    Labels Sphinx has not numbered (a figure of a chapter built without outputs) are skipped.
    """
    problems = []
    wanted = [(label, doc, "equation-" + label, str(number), ("displaymath",))
              for label, (doc, number) in index.equations.items()]
    wanted += [(label, doc, label, str(number), None)
               for label, (doc, _, number) in index.numbered.items()]
    for label, doc, node_id, number, figtypes in wanted:
        numbers = env.toc_fignumbers.get(doc, {})
        for figtype in figtypes or numbers:
            if node_id in numbers.get(figtype, {}):
                got = ".".join(map(str, numbers[figtype][node_id]))
                if got != number:
                    problems.append(f"{label} ({doc}): Sphinx numbers it {got}, the notebooks {number}")
    return problems


def _footer(app, config) -> None:
    options = dict(config.html_theme_options or {})
    note = f'<p class="minigen-version">minigen {version(Path(app.srcdir))}</p>'
    options["extra_footer"] = (options.get("extra_footer") or "") + note
    config.html_theme_options = options


def _index(app) -> BookIndex:
    if getattr(app, "_minigen_index", None) is None:
        from sphinx.util import logging

        app._minigen_index = BookIndex.from_sources(Path(app.srcdir))
        for problem in check_numbers(app._minigen_index, app.env):
            logging.getLogger(__name__).warning(f"minigen_notebooks: {problem}")
    return app._minigen_index


def _write_notebook(app, pagename: str, templatename: str, context: dict, doctree) -> None:
    source = Path(app.env.doc2path(pagename))
    if doctree is None or source.suffix != ".md" or not is_chapter(source):
        return
    nb_config = getattr(app.env, "mystnb_config", None)
    folder = Path(nb_config.output_folder) if nb_config else Path(app.outdir).parent / "jupyter_execute"
    executed_path = folder / f"{pagename}.ipynb"
    executed = nbformat.read(executed_path, as_version=4) if executed_path.exists() else None
    notebook = convert(source, _index(app), executed)
    for target in (Path(app.outdir) / NOTEBOOK_DIR, Path(app.outdir) / "_sources"):
        path = target / f"{pagename}.ipynb"  # _sources/: the theme's download button
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, path)
    context["ipynb_source"] = f"{pagename}.ipynb"
    button = {"type": "link", "text": "Colab", "tooltip": "Open in Colab",
              "icon": "_static/images/logo_colab.png", "label": "colab-button",
              "url": colab_url(pagename, Path(app.srcdir), app.config.minigen_colab_branch)}
    buttons = context.setdefault("header_buttons", [])
    group = next((b for b in buttons if b.get("label") == "launch-buttons"), None)
    if group is None:
        group = {"type": "group", "tooltip": "Launch interactive content",
                 "icon": "fas fa-rocket", "buttons": [], "label": "launch-buttons"}
        buttons.append(group)
    group["buttons"].append(button)


def setup(app) -> dict:
    app.add_config_value("minigen_colab_branch", NOTEBOOK_DIR, "html")
    app.connect("config-inited", _footer)
    # after the theme's launch and download buttons (priority 500), which copy jupyter_execute/
    app.connect("html-page-context", _write_notebook, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": False}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python book/_ext/minigen_notebooks.py OUT_DIR")
    for written_path in write_all(Path(sys.argv[1])):
        print(written_path)
