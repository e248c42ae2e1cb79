"""The execution cache shared by the chapter tests and the build (``book/_ext/minigen_cache.py``).

The build renders what the chapter tests executed. These tests check that the cache folder is keyed
on ``minigen/*.py`` (a change there must not publish stale outputs), that a stored chapter is found
by the same lookup myst-nb makes in the build, with the kernel's outputs, and that the tests store
a passing chapter and drop a failing one (``conftest.py``, run here on a two-cell notebook).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import minigen_cache  # noqa: E402
from conftest import is_chapter  # noqa: E402

HEADER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# A chapter
"""


def make_project(root: Path, cells: list[str]) -> Path:
    """A book root with ``_config.yml``, a one-module ``minigen/`` and ``book/ch.md``."""
    (root / "minigen").mkdir(parents=True)
    (root / "minigen" / "__init__.py").write_text("A = 1\n")
    (root / "_config.yml").write_text("execute:\n  execute_notebooks: cache\n")
    (root / "book").mkdir()
    chapter = root / "book" / "ch.md"
    chapter.write_text(HEADER + "".join(f"\n```{{code-cell}} ipython3\n{c}\n```\n" for c in cells))
    return chapter


def message(kind: str, **content) -> dict:
    """An IOPub message as jupyter_client delivers it (the fields the cache reads)."""
    return {"msg_type": kind, "header": {"msg_type": kind}, "content": content}


def stream(name: str, text: str) -> dict:
    return message("stream", name=name, text=text)


def display(data: dict, display_id: str | None = None, kind: str = "display_data") -> dict:
    extra = {"execution_count": 1} if kind == "execute_result" else {}
    return message(kind, data=data, metadata={},
                   transient={"display_id": display_id} if display_id else {}, **extra)


def update(data: dict, display_id: str) -> dict:
    return message("update_display_data", data=data, metadata={},
                   transient={"display_id": display_id})


# --- the key -------------------------------------------------------------------------------------

def test_key_changes_with_any_minigen_source(tmp_path):
    make_project(tmp_path, ["1"])
    key = minigen_cache.code_key(tmp_path)
    assert key == minigen_cache.code_key(tmp_path)
    assert len(key) == minigen_cache.KEY_LENGTH and minigen_cache._is_key(key)
    (tmp_path / "minigen" / "__init__.py").write_text("A = 2\n")
    edited = minigen_cache.code_key(tmp_path)
    assert edited != key
    (tmp_path / "minigen" / "sub").mkdir()
    (tmp_path / "minigen" / "sub" / "new.py").write_text("")
    assert minigen_cache.code_key(tmp_path) not in (key, edited)


def test_key_ignores_files_that_are_not_python_source(tmp_path):
    make_project(tmp_path, ["1"])
    key = minigen_cache.code_key(tmp_path)
    (tmp_path / "minigen" / "notes.txt").write_text("anything")
    (tmp_path / "book" / "ch.md").write_text("jupyter-cache keys the chapter itself")
    assert minigen_cache.code_key(tmp_path) == key


def test_key_covers_library_versions(tmp_path):
    make_project(tmp_path, ["1"])
    assert (minigen_cache.code_key(tmp_path, packages=("pytest",))
            != minigen_cache.code_key(tmp_path, packages=()))


def test_key_refuses_a_root_without_minigen(tmp_path):
    with pytest.raises(FileNotFoundError, match="minigen"):
        minigen_cache.code_key(tmp_path)


def test_cache_folder_is_the_configured_base_plus_the_key(tmp_path):
    make_project(tmp_path, ["1"])
    key = minigen_cache.code_key(tmp_path)
    assert minigen_cache.cache_dir(tmp_path) == tmp_path / "_build" / ".jupyter_cache" / key
    (tmp_path / "_config.yml").write_text("execute:\n  cache: elsewhere/jc\n")
    assert minigen_cache.cache_dir(tmp_path) == tmp_path / "elsewhere" / "jc" / key


def test_the_book_uses_the_cache():
    import yaml

    execute = yaml.safe_load((ROOT / "_config.yml").read_text())["execute"]
    assert execute["execute_notebooks"] == "cache"
    assert execute["raise_on_error"] is True and execute["allow_errors"] is False


def test_prune_removes_only_other_keys(tmp_path):
    current = tmp_path / ("a" * minigen_cache.KEY_LENGTH)
    other = tmp_path / ("b" * minigen_cache.KEY_LENGTH)
    unrelated = tmp_path / "keep-me"
    for folder in (current, other, unrelated):
        folder.mkdir()
    assert minigen_cache.prune(current) == [other]
    assert current.is_dir() and unrelated.is_dir() and not other.exists()


# --- outputs from kernel messages ------------------------------------------------------------------

def test_outputs_keep_order_and_merge_only_consecutive_streams():
    png = {"image/png": "iVBOR", "text/plain": "<Figure>"}
    outs = minigen_cache.outputs_from_messages([
        message("status", execution_state="busy"),
        stream("stdout", "a\n"), stream("stdout", "b\n"), stream("stderr", "w\n"),
        display(png), stream("stdout", "c\n"),
        display({"text/plain": "3"}, kind="execute_result")])
    assert [o.output_type for o in outs] == ["stream", "stream", "display_data", "stream",
                                             "execute_result"]
    assert (outs[0].name, outs[0].text) == ("stdout", "a\nb\n")
    assert outs[2].data == png and outs[3].text == "c\n"


def test_outputs_follow_clear_output_and_display_updates():
    outs = minigen_cache.outputs_from_messages([
        stream("stdout", "gone\n"), message("clear_output", wait=False),
        display({"text/plain": "v1"}, display_id="d"), update({"text/plain": "v2"}, "d"),
        message("clear_output", wait=True), stream("stdout", "still here\n")])
    assert [o.get("text") for o in outs] == ["still here\n"]
    outs = minigen_cache.outputs_from_messages([
        stream("stdout", "kept\n"), display({"text/plain": "v1"}, display_id="d"),
        update({"text/plain": "v2"}, "d")])
    assert [o.output_type for o in outs] == ["stream", "display_data"]
    assert outs[1].data["text/plain"] == "v2"


# --- store, look up as the build does, discard -------------------------------------------------------

def build_lookup(root: Path, chapter: Path):
    """What myst-nb does in the build with ``execute_notebooks: cache`` (myst_nb.core.execute.cache)."""
    from jupyter_cache import get_cache

    cache = get_cache(str(minigen_cache.cache_dir(root)))
    return cache.merge_match_into_notebook(minigen_cache.read_chapter(chapter))[1]


def test_a_stored_chapter_is_what_the_build_finds(tmp_path):
    cells = ["x = 2\nprint(x)", "from myst_nb import glue\nglue('g', 42, display=False)"]
    chapter = make_project(tmp_path, cells)
    glue = display({"application/papermill.record/text/plain": "42"})
    glue["content"]["metadata"] = {"scrapbook": {"name": "g", "mime_prefix": "application/papermill.record/"}}
    language = {"name": "python", "pygments_lexer": "ipython3"}
    assert minigen_cache.store(tmp_path, chapter, [[stream("stdout", "2\n")], [glue]], cells,
                               language, seconds=1.5) is None
    nb = build_lookup(tmp_path, chapter)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == [1, 2]
    assert code[0].outputs[0].text == "2\n"
    assert code[1].outputs[0].metadata["scrapbook"]["name"] == "g"
    assert nb.metadata["language_info"] == language

    from myst_nb.ext.glue import extract_glue_data  # the build's glue step finds the value

    class Quiet:
        def warning(self, *args, **kwargs):
            raise AssertionError(args)

    glued = extract_glue_data(nb, [1] * len(nb.cells), Quiet())
    assert glued["g"]["data"] == {"text/plain": "42"}


def test_a_minigen_change_or_a_chapter_change_misses_the_cache(tmp_path):
    cells = ["1 + 1"]
    chapter = make_project(tmp_path, cells)
    assert minigen_cache.store(tmp_path, chapter, [[]], cells, None, 0.1) is None
    build_lookup(tmp_path, chapter)
    chapter.write_text(chapter.read_text().replace("1 + 1", "1 + 2"))
    with pytest.raises(KeyError):
        build_lookup(tmp_path, chapter)
    chapter.write_text(chapter.read_text().replace("1 + 2", "1 + 1"))
    build_lookup(tmp_path, chapter)
    (tmp_path / "minigen" / "__init__.py").write_text("A = 3\n")
    with pytest.raises((KeyError, FileNotFoundError)):
        build_lookup(tmp_path, chapter)


def test_store_refuses_code_that_is_not_the_chapters(tmp_path):
    chapter = make_project(tmp_path, ["1 + 1"])
    why = minigen_cache.store(tmp_path, chapter, [[]], ["1 + 2"], None, 0.1)
    assert why and "differ" in why
    assert not (minigen_cache.cache_dir(tmp_path) / "global.db").exists()


def test_discard_removes_the_chapter(tmp_path):
    cells = ["1 + 1"]
    chapter = make_project(tmp_path, cells)
    assert minigen_cache.discard(tmp_path, chapter) is False
    minigen_cache.store(tmp_path, chapter, [[]], cells, None, 0.1)
    assert minigen_cache.discard(tmp_path, chapter) is True
    with pytest.raises(KeyError):
        build_lookup(tmp_path, chapter)


def test_every_chapter_reads_the_same_code_in_the_tests_and_the_build():
    """nbval runs jupytext's reading; the build looks up myst-nb's. They must agree, or the
    build can never use what the tests executed (it would execute every chapter again)."""
    from jupyter_cache.cache.main import JupyterCacheBase

    chapters = [p for p in sorted((ROOT / "book").glob("*.md")) if is_chapter(p)]
    assert chapters
    hashed = JupyterCacheBase("never-created").create_hashed_notebook
    for path in chapters:
        tests, build = jupytext.read(path), minigen_cache.read_chapter(path)
        assert hashed(tests)[1] == hashed(build)[1], path.name


# --- the chapter tests fill the cache (conftest.py, on a two-cell notebook) -------------------------

def run_chapter_tests(root: Path) -> subprocess.CompletedProcess:
    shutil.copy(ROOT / "conftest.py", root / "conftest.py")
    shutil.copytree(ROOT / "book" / "_ext", root / "book" / "_ext",
                    ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly",
                           "-p", "no:cacheprovider", "book/ch.md"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_chapter_tests_store_a_passing_chapter_and_drop_a_failing_one(tmp_path):
    cells = ["import os\nfrom IPython.display import display\nprint('hello')",
             "display({'image/png': 'iVBOR'}, raw=True)\nx = 1\nx;",
             "assert not os.path.exists('fail'), 'told to fail'\n'value'"]
    chapter = make_project(tmp_path, cells)
    run = run_chapter_tests(tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    nb = build_lookup(tmp_path, chapter)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].outputs[0].text == "hello\n"
    outputs = code[1].outputs  # as in Jupyter, the trailing ';' hides the value of x
    assert [o.output_type for o in outputs] == ["display_data"], outputs
    assert outputs[0].data == {"image/png": "iVBOR"}
    assert code[2].outputs[0].data["text/plain"] == "'value'"
    assert nb.metadata["language_info"]["name"] == "python"

    # The same code failing now: the good run stored before must not stay in the cache.
    (tmp_path / "book" / "fail").write_text("")
    run = run_chapter_tests(tmp_path)
    assert run.returncode == 1 and "told to fail" in run.stdout, run.stdout + run.stderr
    with pytest.raises(KeyError):
        build_lookup(tmp_path, chapter)
