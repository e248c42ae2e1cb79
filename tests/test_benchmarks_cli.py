"""``benchmarks/run.py``'s command line: help and bad arguments run nothing and leave the recorded
results alone, and results are replaced only by a run that completed."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "run.py"
RESULTS = [ROOT / "benchmarks" / "results.md", ROOT / "benchmarks" / "results.json"]


def load_run():
    spec = importlib.util.spec_from_file_location("benchmarks_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def snapshot() -> list[tuple[bytes, int]]:
    return [(p.read_bytes(), p.stat().st_mtime_ns) if p.exists() else (b"", 0) for p in RESULTS]


def test_help_runs_nothing_and_keeps_the_results():
    before = snapshot()
    run = run_script("--help")
    assert run.returncode == 0, run.stderr
    assert "--from-build" in run.stdout and "CHAPTER" in run.stdout
    assert snapshot() == before


@pytest.mark.parametrize("args, message", [
    (["no_such_chapter"], "unknown chapter"),
    (["--from-build", "/no/such/build.log"], "no such file"),
    (["--no-such-option"], "unrecognized arguments"),
])
def test_bad_arguments_exit_2_and_keep_the_results(args, message):
    before = snapshot()
    run = run_script(*args)
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert message in run.stderr
    assert snapshot() == before


def test_an_interrupted_run_leaves_the_recorded_results(tmp_path, monkeypatch):
    run = load_run()
    for name in ("results.md", "results.json"):
        (tmp_path / name).write_text(f"recorded {name}")
    first = run.chapters()[0].stem

    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "run_chapter", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run.main([first, "--out", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "results.md"]
    assert (tmp_path / "results.md").read_text() == "recorded results.md"


def test_a_completed_run_replaces_both_files(tmp_path, monkeypatch):
    run = load_run()
    (tmp_path / "results.md").write_text("old")
    first, second = (p.stem for p in run.chapters()[:2])
    monkeypatch.setattr(run, "run_chapter", lambda path: {
        "chapter": path.stem, "seconds": 1.5, "status": "ok", "figures": {"x": 0.25}})
    assert run.main([first, second, "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "results.md"]
    table = (tmp_path / "results.md").read_text()
    assert f"| {first} | 1.5 | ok | x = 0.25 |" in table and f"| {second} |" in table
    assert "Total: 3 s." in table


def test_from_build_reads_cached_chapters_from_the_cache(tmp_path):
    """A build that took a chapter from the execution cache logs no time for it: the time the
    chapter tests recorded in the cache is used."""
    run = load_run()
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    import minigen_cache
    from jupyter_cache import get_cache

    chapter = run.chapters()[0]
    cache = get_cache(str(tmp_path / "jc"))
    nb = minigen_cache.read_chapter(chapter)
    for count, cell in enumerate((c for c in nb.cells if c.cell_type == "code"), start=1):
        cell.execution_count = count
    from jupyter_cache.base import CacheBundleIn

    record = cache.cache_notebook_bundle(
        CacheBundleIn(nb, str(chapter), data={"execution_seconds": 12.5}))
    log = (f"Using jupyter-cache at: {tmp_path / 'jc'}\n"
           f"{chapter}: Using cached notebook: ID={record.pk} [mystnb]\n"
           f"/x/book/other.md: Executed notebook in 3.25 seconds [mystnb]\n")
    assert run._cached_seconds(log) == {chapter.stem: 12.5}


def test_glued_numbers_are_the_figures():
    """A chapter hands its figures to ``benchmarks/`` with ``myst_nb.glue(..., display=False)``:
    numbers are figures, glued text (quoted for the prose) is not, and a name glued twice fails."""
    import nbclient
    import nbformat

    run = load_run()
    source = ("from myst_nb import glue\n"
              "glue('ratio', 1.2345678901, display=False)\n"
              "glue('steps', 40, display=False)\n"
              "glue('ratio_text', f'{1.2345678901:.2f}', display=False)\n")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    nbclient.NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    assert run.glued_figures(nb) == {"ratio": 1.2345678901, "steps": 40.0}
    nb.cells.append(nbformat.v4.new_code_cell("glue('steps', 41, display=False)"))
    nbclient.NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    with pytest.raises(ValueError, match="'steps' is glued twice"):
        run.glued_figures(nb)
