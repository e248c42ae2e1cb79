"""Execute each chapter once and tabulate its wall time and the figures it reports.

Run by hand, never in CI:  ``python benchmarks/run.py [chapter-stem ...]``

or, to tabulate a book build that already ran (``jupyter-book build . 2>&1 | tee build.log``)
without executing anything again:  ``python benchmarks/run.py --from-build build.log``. The build
executes the chapters one after another, and myst-nb logs each one's wall time; the figures are
read from the executed notebooks in ``_build/jupyter_execute`` (the lines ``report`` printed).

Each chapter in ``_toc.yml`` that is a notebook is executed in a fresh kernel (working directory
``book/``, one intra-op thread, progress bars off). The figures a chapter passes to
``minigen.runtime.report`` are collected through the ``MINIGEN_REPORT`` file. Results go to
``benchmarks/results.md`` and ``benchmarks/results.json``, with the machine's core count.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import jupytext
import nbclient
import nbformat
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from conftest import is_chapter  # noqa: E402


def chapters() -> list[Path]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc.get("parts", []) for c in part.get("chapters", [])]
    return [ROOT / f"{f}.md" for f in files if is_chapter(ROOT / f"{f}.md")]


def run_chapter(path: Path) -> dict:
    """Execute one chapter; return its wall time, status and reported figures."""
    with tempfile.NamedTemporaryFile("w+", suffix=".jsonl", delete=False) as f:
        report = f.name
    os.environ.update(MINIGEN_REPORT=report, MINIGEN_PROGRESS="0", OMP_NUM_THREADS="1")
    nb = jupytext.read(path)
    # A last cell records the kernel's CPU time: unlike wall time, it barely moves with machine load.
    nb.cells.append(nbformat.v4.new_code_cell(
        "import time as _time\nfrom minigen.runtime import report as _report\n"
        "_report(kernel_cpu_s=round(_time.process_time(), 1))"))
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    start, status = time.perf_counter(), "ok"
    try:
        client.execute()
    except Exception as err:  # a failing chapter is recorded, not fatal to the benchmark
        status = f"failed: {type(err).__name__}: {str(err).strip().splitlines()[-1][:200]}"
    seconds = time.perf_counter() - start
    figures: dict = {}
    for line in Path(report).read_text().splitlines():
        figures.update(json.loads(line))
    os.unlink(report)
    return {"chapter": path.stem, "seconds": round(seconds, 1), "status": status, "figures": figures}


def from_build(log: Path) -> list[dict]:
    """Rows from a finished build: myst-nb's logged wall times, figures from the executed notebooks."""
    pattern = re.compile(r"book/(\S+)\.md: Executed notebook in ([0-9.]+) seconds")
    seconds = {m[1]: float(m[2]) for m in pattern.finditer(log.read_text(errors="replace"))}
    figure_line = re.compile(r"^([\w.]+)\s{2,}(\S+)$")  # names may hold a dot: sweep_lambda_0.1_c2st
    rows = []
    for path in chapters():
        executed = ROOT / "_build" / "jupyter_execute" / "book" / f"{path.stem}.ipynb"
        if path.stem not in seconds or not executed.exists():
            rows.append({"chapter": path.stem, "seconds": float("nan"), "status": "not in build",
                         "figures": {}})
            continue
        figures: dict = {}
        for cell in nbformat.read(executed, as_version=4).cells:
            if cell.cell_type != "code" or "report(" not in cell.source:
                continue
            for out in cell.get("outputs", []):
                for line in out.get("text", "").splitlines():
                    if m := figure_line.match(line.strip()):
                        figures[m[1]] = _number(m[2])
        rows.append({"chapter": path.stem, "seconds": seconds[path.stem], "status": "ok",
                     "figures": figures})
    return rows


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


def main(args: list[str]) -> None:
    meta = {"date": datetime.date.today().isoformat(), "cores": os.cpu_count(),
            "machine": platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__}
    if args[:1] == ["--from-build"]:
        rows = from_build(Path(args[1]))
        meta["source"] = f"jupyter-book build log {args[1]}"
    else:
        rows = []
        for path in [p for p in chapters() if not args or p.stem in args]:
            rows.append(run_chapter(path))
    for row in rows:
        print(f"{row['chapter']:<28} {row['seconds']:>7.1f} s  {row['status']}  {row['figures']}",
              flush=True)
    out = ROOT / "benchmarks"
    (out / "results.json").write_text(json.dumps({"machine": meta, "chapters": rows}, indent=2))
    (out / "results.md").write_text(to_markdown(meta, rows))


if __name__ == "__main__":
    main(sys.argv[1:])
