"""Execute chapters with several book seeds and tabulate the spread of every figure they report.

Run by hand, never in CI:  ``python benchmarks/seeds.py [CHAPTER ...] [--seeds 0 1 2 3 4] [--jobs 2]``

Every chapter calls ``minigen.setup()``, which takes the book seed from ``MINIGEN_SEED``; every
random stream a chapter draws (``minigen.rng(k)``, ``minigen.seed(k)``) moves with it. For each
(chapter, seed) this script executes the chapter in a fresh kernel with that seed (through
``run.run_chapter``) and records its status (``ok``, or the failing cell's error: an assert that
does not hold at that seed) and the numbers it glued (``run.glued_figures``).

Runs are kept in ``seeds.json`` (one record per chapter and seed; a new run of the same pair
replaces the old one, other records stay), so chapters can be run a few at a time. ``seeds.md`` is
rewritten from all records each time: a status table, then for every reported figure its value at
seed 0 and the median, minimum and maximum over seeds.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as bench  # noqa: E402  (benchmarks/run.py)

ROOT = bench.ROOT


def run_one(stem: str, seed: int) -> dict:
    """Execute one chapter with ``MINIGEN_SEED=seed`` in a child process; return its record."""
    code = ("import json, os, sys; sys.path.insert(0, %r); import run; "
            "path = {p.stem: p for p in run.chapters()}[%r]; "
            "print('@@' + json.dumps(run.run_chapter(path)))") % (str(HERE), stem)
    env = dict(os.environ, MINIGEN_SEED=str(seed), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@")]
    if not lines:
        tail = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()][-3:]
        return {"chapter": stem, "seed": seed, "seconds": float("nan"), "figures": {},
                "status": f"failed to run (exit {proc.returncode}): {' / '.join(tail)[:300] or 'no output'}"}
    record = json.loads(lines[-1][2:])
    record["seed"] = seed
    return record


def load(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return json.loads(path.read_text())["runs"]


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    """Records of ``old`` and ``new``; a (chapter, seed) pair in ``new`` replaces the old record."""
    keyed = {(r["chapter"], r["seed"]): r for r in old}
    keyed.update({(r["chapter"], r["seed"]): r for r in new})
    order = {p.stem: i for i, p in enumerate(bench.chapters())}
    return sorted(keyed.values(), key=lambda r: (order.get(r["chapter"], 99), r["seed"]))


def spread(runs: list[dict]) -> dict[str, dict[str, dict]]:
    """For each chapter and numeric figure: the values by seed and their median, min and max."""
    table: dict[str, dict[str, dict]] = {}
    for r in runs:
        if r["status"] != "ok":
            continue
        for name, value in r["figures"].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                table.setdefault(r["chapter"], {}).setdefault(name, {"by_seed": {}})["by_seed"][r["seed"]] = value
    for figures in table.values():
        for row in figures.values():
            values = list(row["by_seed"].values())
            row.update(median=statistics.median(values), min=min(values), max=max(values), n=len(values))
    return table


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def to_markdown(runs: list[dict]) -> str:
    seeds = sorted({r["seed"] for r in runs})
    chapters = list(dict.fromkeys(r["chapter"] for r in runs))
    by = {(r["chapter"], r["seed"]): r for r in runs}
    lines = [f"# Chapters over book seeds ({datetime.date.today()})", "",
             f"Each chapter executed in a fresh kernel with `MINIGEN_SEED` = {', '.join(map(str, seeds))} "
             f"({os.cpu_count()} CPU cores, Python {platform.python_version()}). "
             "A chapter passes at a seed when every cell, every assert included, ran. The time shown is "
             "the chapter kernel's CPU time (wall times, on a shared machine, are in seeds.json).", "",
             "## Status", "", "| chapter | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|" + "---|" * len(seeds)]
    for c in chapters:
        cells = []
        for s in seeds:
            r = by.get((c, s))
            cpu = None if r is None else r["figures"].get("kernel_cpu_s")
            cells.append("—" if r is None else
                         (f"ok ({cpu:.0f} s CPU)" if r["status"] == "ok" and cpu is not None else
                          "ok" if r["status"] == "ok" else r["status"].replace("|", "/")))
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines += ["", "## Figures", "", "Value at seed 0, then median, minimum and maximum over the seeds "
              "at which the chapter passed (n).", ""]
    for c, figures in spread(runs).items():
        lines += [f"### {c}", "", "| figure | seed 0 | median | min | max | n |", "|---|---|---|---|---|---|"]
        for name, row in figures.items():
            if name == "kernel_cpu_s" or name.endswith("_cpu_s") or name.endswith("_wall_s"):
                continue
            s0 = row["by_seed"].get(0)
            lines.append(f"| {name} | {'—' if s0 is None else _fmt(s0)} | {_fmt(row['median'])} | "
                         f"{_fmt(row['min'])} | {_fmt(row['max'])} | {row['n']} |")
        lines.append("")
    return "\n".join(lines)


def write(out: Path, runs: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, text in {"seeds.json": json.dumps({"runs": runs}, indent=1),
                       "seeds.md": to_markdown(runs)}.items():
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, out / name)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/seeds.py",
        description="Execute chapters with several book seeds (MINIGEN_SEED) and write seeds.md/seeds.json.")
    parser.add_argument("chapters", nargs="*", metavar="CHAPTER",
                        help="chapter stems from _toc.yml (default: every chapter)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], metavar="SEED",
                        help="book seeds (default: 0 1 2 3 4)")
    parser.add_argument("--jobs", type=int, default=2, help="chapters executed at once (default 2)")
    parser.add_argument("--out", type=Path, default=HERE, metavar="DIR",
                        help="folder for seeds.md and seeds.json (default: benchmarks/)")
    args = parser.parse_args(argv)
    known = [p.stem for p in bench.chapters()]
    unknown = [c for c in args.chapters if c not in known]
    if unknown:
        parser.error(f"unknown chapter(s) {', '.join(unknown)}; _toc.yml lists: {', '.join(known)}")
    if any(s < 0 for s in args.seeds):
        parser.error("seeds must be non-negative")
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    args.stems = args.chapters or known
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    jobs = [(c, s) for c in args.stems for s in args.seeds]
    runs = load(args.out / "seeds.json")
    failed = 0
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(run_one, c, s): (c, s) for c, s in jobs}
        for fut in concurrent.futures.as_completed(futures):
            record = fut.result()
            failed += record["status"] != "ok"
            print(f"{record['chapter']} seed {record['seed']}: {record['status']} ({record['seconds']} s)",
                  flush=True)
            runs = merge(runs, [record])
            write(args.out, runs)  # after every run: an interrupted sweep keeps what finished
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
