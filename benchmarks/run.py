"""Execute each chapter once and tabulate its wall time and the figures it reports.

Run by hand, never in CI:  ``python benchmarks/run.py [CHAPTER ...]`` (``--help`` for options)

or, to tabulate a book build that already ran (``jupyter-book build . 2>&1 | tee build.log``)
without executing anything again:  ``python benchmarks/run.py --from-build build.log``. For a
chapter the build executed, myst-nb logs its wall time; for one it took from the execution cache
(``Using cached notebook``, the chapter tests ran it), the time is the one recorded in that cache.
The figures are read from the executed notebooks in ``_build/jupyter_execute``.

Each chapter in ``_toc.yml`` that is a notebook is executed in a fresh kernel (working directory
``book/``, one intra-op thread, progress bars off). A chapter's figures are the numbers it glues
(``myst_nb.glue(name, value, display=False)``: stored in the executed notebook, not shown on the
page; glued text, which the prose quotes, is not a figure), read from the executed notebook by
:func:`glued_figures`. Results go to
``results.md`` and ``results.json`` in ``--out`` (default ``benchmarks/``), with the machine's
core count; they are written to temporary files and renamed only once every requested chapter
has run, so an interrupted run leaves the recorded results as they were.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def chapters() -> list[Path]:
    """The chapters (notebook pages) listed in ``_toc.yml``, in order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc.get("parts", []) for c in part.get("chapters", [])]
    return [ROOT / f"{f}.md" for f in files if _is_chapter(ROOT / f"{f}.md")]


def _is_chapter(path: Path) -> bool:
    """``conftest.is_chapter``, without importing the test machinery (torch, nbval)."""
    if not path.is_file():
        return False
    head = path.read_text(encoding="utf-8")[:600]
    return head.startswith("---") and "kernelspec:" in head


def run_chapter(path: Path) -> dict:
    """Execute one chapter; return its wall time, status and reported figures."""
    import jupytext
    import nbclient
    import nbformat

    os.environ.update(MINIGEN_PROGRESS="0", MINIGEN_KEEP_FREED_MEMORY="1", OMP_NUM_THREADS="1")
    nb = jupytext.read(path)
    # A last cell records the kernel's CPU time: unlike wall time, it barely moves with machine load.
    nb.cells.append(nbformat.v4.new_code_cell(
        "import time as _time\nfrom myst_nb import glue as _glue\n"
        "_glue('kernel_cpu_s', round(_time.process_time(), 1), display=False)"))
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    start, status = time.perf_counter(), "ok"
    try:
        client.execute()
    except Exception as err:  # a failing chapter is recorded, not fatal to the benchmark
        status = f"failed: {type(err).__name__}: {_failure(str(err))}"
    seconds = time.perf_counter() - start
    return {"chapter": path.stem, "seconds": round(seconds, 1), "status": status,
            "figures": glued_figures(nb)}


GLUED = "application/papermill.record/text/plain"  # where myst_nb.glue(..., display=False) stores a value


def glued_figures(nb) -> dict[str, float]:
    """The numbers an executed notebook glued, by name, in cell order.

    ``myst_nb.glue(name, value, display=False)`` stores ``repr(value)`` under the ``scrapbook``
    metadata; a number is a figure, glued text (a quoted string, formatted for the prose) is not.
    A name glued twice is an error, as it is for the book build.
    """
    figures: dict[str, float] = {}
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            name = out.get("metadata", {}).get("scrapbook", {}).get("name")
            if name is None or GLUED not in out.get("data", {}):
                continue
            if name in figures:
                raise ValueError(f"{name!r} is glued twice")
            value = _number(out["data"][GLUED])
            if isinstance(value, float):
                figures[name] = value
    return figures


def _failure(text: str) -> str:
    """The failing line and the error of a cell's traceback, without terminal colours (one line)."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines() if ln.strip()]
    arrow = [ln for ln in lines if ln.startswith("---->")]
    error = [ln for ln in lines if re.match(r"^\w*(Error|Exception)\b", ln)]
    return " | ".join((arrow[-1:] + error[-1:]) or lines[-1:])[:400]


def from_build(log: Path, wanted: list[Path] | None = None) -> list[dict]:
    """Rows from a finished build: wall times from its log (or from the execution cache for the
    chapters it took from there), figures from the executed notebooks."""
    import nbformat

    text = log.read_text(errors="replace")
    seconds = {m[1]: float(m[2]) for m in re.finditer(
        r"book/(\S+)\.md: Executed notebook in ([0-9.]+) seconds", text)}
    seconds.update(_cached_seconds(text))
    rows = []
    for path in wanted or chapters():
        executed = ROOT / "_build" / "jupyter_execute" / "book" / f"{path.stem}.ipynb"
        if path.stem not in seconds or not executed.exists():
            rows.append({"chapter": path.stem, "seconds": float("nan"), "status": "not in build",
                         "figures": {}})
            continue
        figures = glued_figures(nbformat.read(executed, as_version=4))
        rows.append({"chapter": path.stem, "seconds": seconds[path.stem], "status": "ok",
                     "figures": figures})
    return rows


def _cached_seconds(text: str) -> dict[str, float]:
    """Execution times of the chapters the build took from the cache (``Using cached notebook:
    ID=n``), as the chapter tests recorded them in it (``execution_seconds``)."""
    cached = {m[1]: int(m[2]) for m in re.finditer(
        r"book/(\S+)\.md: Using cached notebook: ID=(\d+)", text)}
    folder = re.search(r"Using jupyter-cache at: (\S+)", text)
    if not cached or not folder or not Path(folder[1]).is_dir():
        return {}
    from jupyter_cache import get_cache

    cache, found = get_cache(folder[1]), {}
    for stem, pk in cached.items():
        try:
            data = cache.get_cache_record(pk).data or {}
        except KeyError:
            continue
        if data.get("execution_seconds") is not None:
            found[stem] = float(data["execution_seconds"])
    return found


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def to_markdown(meta: dict, rows: list[dict]) -> str:
    lines = [f"# Chapter benchmarks ({meta['date']})", "",
             f"{meta['cores']} CPU cores, {meta['machine']}, Python {meta['python']}, "
             f"torch {meta['torch']}. One intra-op thread per chapter.", "",
             meta.get("source", "Wall time is the chapter's execution in a fresh kernel; "
                      "`kernel_cpu_s` (among the figures) is that kernel's CPU time, which moves "
                      "little with machine load."), "",
             "| chapter | wall time (s) | status | reported figures |", "|---|---|---|---|"]
    for r in rows:
        figs = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                         for k, v in r["figures"].items())
        lines.append(f"| {r['chapter']} | {r['seconds']} | {r['status']} | {figs} |")
    total = sum(r["seconds"] for r in rows)
    return "\n".join(lines + ["", f"Total: {total:.0f} s.", ""])


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line; exits with status 2 (argparse's) on a bad argument."""
    parser = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description="Execute the book's chapters one by one (or read a finished build) and "
                    "tabulate each chapter's wall time and reported figures.")
    parser.add_argument("chapters", nargs="*", metavar="CHAPTER",
                        help="chapter stems from _toc.yml, e.g. 01_function_approximation "
                             "(default: every chapter)")
    parser.add_argument("--from-build", type=Path, metavar="LOG",
                        help="execute nothing: read the log of a finished jupyter-book build "
                             "and its executed notebooks in _build/jupyter_execute")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks", metavar="DIR",
                        help="folder for results.md and results.json (default: benchmarks/)")
    args = parser.parse_args(argv)
    known = {p.stem: p for p in chapters()}
    unknown = [c for c in args.chapters if c not in known]
    if unknown:
        parser.error(f"unknown chapter(s) {', '.join(unknown)}; _toc.yml lists: "
                     f"{', '.join(known)}")
    args.paths = [known[c] for c in args.chapters] or list(known.values())
    if args.from_build is not None and not args.from_build.is_file():
        parser.error(f"--from-build: no such file: {args.from_build}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out: not a folder: {args.out}")
    return args


def write_results(out: Path, meta: dict, rows: list[dict]) -> None:
    """Write ``results.json`` and ``results.md`` in ``out``: each to a temporary file first,
    renamed over the old one only when both are written."""
    out.mkdir(parents=True, exist_ok=True)
    texts = {"results.json": json.dumps({"machine": meta, "chapters": rows}, indent=2),
             "results.md": to_markdown(meta, rows)}
    temporary = {}
    try:
        for name, text in texts.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out)
            temporary[name] = Path(tmp)
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
        for name, tmp in temporary.items():
            os.replace(tmp, out / name)
    finally:
        for tmp in temporary.values():
            tmp.unlink(missing_ok=True)


def _print_row(row: dict) -> None:
    print(f"{row['chapter']:<28} {row['seconds']:>7.1f} s  {row['status']}  {row['figures']}",
          flush=True)


def main(argv: list[str]) -> int:
    """Run the benchmark; return the exit status (1 when a chapter failed, results still written)."""
    args = parse_args(argv)
    import torch

    meta = {"date": datetime.date.today().isoformat(), "cores": os.cpu_count(),
            "machine": platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__}
    if args.from_build is not None:
        rows = from_build(args.from_build, args.paths)
        meta["source"] = f"jupyter-book build log {args.from_build}"
        for row in rows:
            _print_row(row)
    else:
        rows = []
        for path in args.paths:
            rows.append(run_chapter(path))
            _print_row(rows[-1])
    write_results(args.out, meta, rows)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
