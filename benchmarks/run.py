"""Execute each chapter once and tabulate its wall time and the figures it reports.

Run by hand, never in CI:  ``python benchmarks/run.py [chapter-stem ...]``

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


def to_markdown(meta: dict, rows: list[dict]) -> str:
    lines = [f"# Chapter benchmarks ({meta['date']})", "",
             f"{meta['cores']} CPU cores, {meta['machine']}, Python {meta['python']}, "
             f"torch {meta['torch']}. One intra-op thread per chapter.", "",
             "Wall time is the chapter's execution in a fresh kernel; `kernel_cpu_s` (among the figures) "
             "is that kernel's CPU time, which moves little with machine load.", "",
             "| chapter | wall time (s) | status | reported figures |", "|---|---|---|---|"]
    for r in rows:
        figs = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                         for k, v in r["figures"].items())
        lines.append(f"| {r['chapter']} | {r['seconds']} | {r['status']} | {figs} |")
    total = sum(r["seconds"] for r in rows)
    return "\n".join(lines + ["", f"Total: {total:.0f} s.", ""])


def main(selected: list[str]) -> None:
    paths = [p for p in chapters() if not selected or p.stem in selected]
    meta = {"date": datetime.date.today().isoformat(), "cores": os.cpu_count(),
            "machine": platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__}
    rows = []
    for path in paths:
        row = run_chapter(path)
        print(f"{row['chapter']:<28} {row['seconds']:>7.1f} s  {row['status']}  {row['figures']}",
              flush=True)
        rows.append(row)
    out = ROOT / "benchmarks"
    (out / "results.json").write_text(json.dumps({"machine": meta, "chapters": rows}, indent=2))
    (out / "results.md").write_text(to_markdown(meta, rows))


if __name__ == "__main__":
    main(sys.argv[1:])
