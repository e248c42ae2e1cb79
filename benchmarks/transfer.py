"""Train every model's default recipe on every target of ``minigen.data.targets()``, over seeds.

    python benchmarks/transfer.py [--models NAME ...] [--targets NAME ...] [--seeds 0 1 2] [--jobs 2]

Each run builds a model with its family's defaults (one line, as a reader would), trains it with
``minigen.train.fit`` and its recipe on one CPU thread, and measures it against the exact target:
in 1D the W1 noise-floor ratio (n = 20,000); in 2D the sliced-Wasserstein noise-floor ratio
(n = 4,000) and the classifier two-sample test (2,000 points each). Results go to
``benchmarks/transfer.json`` (every run) and ``benchmarks/transfer.md`` (median, min and max over
seeds, the training CPU and wall seconds), written only when every run completed. The
noise-floor ratios use ``N_REPEATS`` model samples each (8 in 1D, 16 in 2D) and record their standard error. Runs take
10-40 s each; the whole grid takes about an hour on two free cores (``--jobs 2``).

``--cache DIR`` keeps one JSON file per completed run there and reuses it on the next call, so a
grid can be completed in pieces; delete a model's files after changing its defaults.

``--models`` also takes the names of :data:`VARIANTS`, changed recipes a reader passes in one line
(more steps, another kernel, a heavy-tailed source, data seen through ``asinh``), measured the same
way; write them elsewhere (``--out /tmp/changes``) and copy the figures to "What a change reaches"
in ``transfer.md``:

    python benchmarks/transfer.py --models "flow matching, asinh data" --targets student_t_1d \
        --seeds 0 1 2 --jobs 1 --out /tmp/changes
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's minigen, not an installed one
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["MINIGEN_PROGRESS"] = "0"

import torch  # noqa: E402

from minigen import data, diffusion, flows, gan, metrics, mmd, train  # noqa: E402
from minigen import flow_matching as fm  # noqa: E402

# One line per family, as a reader writes it: the family's default recipe for a target of dimension d.
MODELS = {
    "flow": lambda d: flows.monotone_flow() if d == 1 else flows.coupling_flow(d),
    "MMD generator": lambda d: mmd.MMDGenerator(d),
    "WGAN": lambda d: gan.GAN(d),
    "diffusion": lambda d: diffusion.Diffusion(d),
    "flow matching": lambda d: fm.FlowMatching(d),
}
# Changed recipes, one line each as a reader would pass them: (family, builder for dimension d).
# ``--models`` takes these names too; their results go to "What a change reaches" in transfer.md.
MULTI_SCALE = (0.05, 0.1, 0.2, 0.4, 0.8)  # bandwidths of the multi-scale Gaussian kernel, 1D
VARIANTS = {
    "MMD generator, 5x steps": ("MMD generator", lambda d: mmd.MMDGenerator(
        d, recipe=dict(n_steps=15_000 if d == 1 else 7_500))),
    "MMD generator, 4x steps": ("MMD generator", lambda d: mmd.MMDGenerator(
        d, recipe=dict(n_steps=12_000 if d == 1 else 7_500))),
    "MMD generator, multi-scale kernel": ("MMD generator", lambda d: mmd.MMDGenerator(
        d, kernel=partial(mmd.gaussian_kernel, bandwidth=MULTI_SCALE),
        recipe=dict(n_steps=15_000 if d == 1 else 7_500))),
    "MMD generator, batch 512": ("MMD generator", lambda d: mmd.MMDGenerator(
        d, recipe=dict(batch_size=512, n_steps=6_000 if d == 1 else 3_000))),
    "MMD generator, lr 1e-2, 4x steps": ("MMD generator", lambda d: mmd.MMDGenerator(
        d, recipe=dict(lr=1e-2, n_steps=12_000 if d == 1 else 6_000))),
    "WGAN, depth 3, 2x lr, 4,000 steps, cosine": ("WGAN", lambda d: gan.GAN(
        d, depth=3, recipe=dict(n_steps=4_000, schedule="cosine",
                                lr={"generator": 2e-3, "critic": 4e-3}))),
    "WGAN, depth 3, 2x lr, 4 critic steps, cosine": ("WGAN", lambda d: gan.GAN(
        d, depth=3, n_critic=4, recipe=dict(n_steps=2_500, schedule="cosine",
                                            lr={"generator": 2e-3, "critic": 4e-3}))),
    "WGAN, depth 3, 2x lr, 3 critic steps, cosine": ("WGAN", lambda d: gan.GAN(
        d, depth=3, n_critic=3, recipe=dict(n_steps=3_000, schedule="cosine",
                                            lr={"generator": 2e-3, "critic": 4e-3}))),
    "WGAN, 8 critic steps, cosine": ("WGAN", lambda d: gan.GAN(
        d, n_critic=8, recipe=dict(n_steps=2_000, schedule="cosine"))),
    "WGAN, depth 3, 2x lr, 6 critic steps, cosine": ("WGAN", lambda d: gan.GAN(
        d, depth=3, n_critic=6, recipe=dict(n_steps=2_000, schedule="cosine",
                                            lr={"generator": 2e-3, "critic": 4e-3}))),
    "WGAN, 2.5x steps, cosine": ("WGAN", lambda d: gan.GAN(
        d, recipe=dict(n_steps=5_000, schedule="cosine"))),
    "WGAN, 5 critic steps": ("WGAN", lambda d: gan.GAN(
        d, n_critic=5, recipe=dict(n_steps=2_500, schedule="cosine"))),
    "WGAN, latent 4, 2.5x steps": ("WGAN", lambda d: gan.GAN(
        d, latent_dim=4, recipe=dict(n_steps=5_000, schedule="cosine"))),
    # the monotone-flow variants are for 1D targets, the coupling-flow one for 2D
    "flow, 4x steps": ("flow", lambda d: flows.Flow(
        flows.monotone_flow().transforms, flows.StandardNormal(1),
        dict(flows.MONOTONE_RECIPE, n_steps=6_000))),
    "flow, 64 units, 2x steps": ("flow", lambda d: flows.Flow(
        [flows.MonotoneIntegral(64, 2, 24)], flows.StandardNormal(1),
        dict(flows.MONOTONE_RECIPE, n_steps=3_000))),
    "flow, 8 layers, 1.5x steps": ("flow", lambda d: flows.Flow(
        flows.coupling_flow(d, n_layers=8).transforms, flows.StandardNormal(d),
        dict(flows.COUPLING_RECIPE, n_steps=3_900))),
    "flow, asinh data, 4x steps": ("flow", lambda d: flows.Flow(
        flows.monotone_flow().transforms, flows.StandardNormal(1),
        dict(flows.MONOTONE_RECIPE, n_steps=6_000))),
    "diffusion, 2x steps": ("diffusion", lambda d: diffusion.Diffusion(
        d, recipe=dict(n_steps=8_000))),
    "flow matching, Student-t source": ("flow matching", lambda d: fm.FlowMatching(
        d, source=data.StudentT(df=3))),
}
# Trained on u = asinh(x) and sampled as x = sinh(u): the tail-aware transform for heavy tails.
for _family, _build in [("flow", lambda d: flows.monotone_flow()),
                        ("diffusion", lambda d: diffusion.Diffusion(d)),
                        ("flow matching", lambda d: fm.FlowMatching(d)),
                        ("MMD generator", lambda d: mmd.MMDGenerator(d))]:
    VARIANTS[f"{_family}, asinh data"] = (_family, _build)
ASINH = {name for name in VARIANTS if "asinh data" in name}


class Asinh:
    """A target seen through :math:`u = \\operatorname{asinh}(x)`: a power-law tail
    :math:`P(|x| > s) \\sim s^{-\\nu}` becomes the exponential tail :math:`e^{-\\nu |u|}`."""

    def __init__(self, target):
        self.target, self.dim = target, target.dim

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float32):
        return torch.asinh(self.target.sample(n, generator, dtype=dtype))


# The targets: (1D ratio, 2D C2ST) per family.
GOALS = {"flow": (1.3, 0.55), "MMD generator": (2.0, 0.60), "WGAN": (3.0, 0.60),
         "diffusion": (1.3, 0.55), "flow matching": (1.3, 0.55)}
BUDGET_CPU = 30  # training CPU seconds per run, one thread
N_1D, N_2D, N_C2ST = 20_000, 4_000, 2_000
N_REPEATS = {1: 8, 2: 16}  # model samples per noise-floor ratio (1D samples cost more)


def _path(model_name: str, target_name: str, seed: int, cache: Path) -> Path:
    return cache / f"{model_name.replace(' ', '_')}__{target_name}__{seed}.json"


def run_one(job: tuple[str, str, int, Path | None]) -> dict:
    """Train and measure one (model, target, seed); returns a record of figures and seconds."""
    model_name, target_name, seed, cache = job
    path = _path(*job) if cache else None
    if path is not None and path.exists():
        return json.loads(path.read_text())
    torch.set_num_threads(1)
    target = data.targets()[target_name]
    torch.manual_seed(seed)
    model = {**MODELS, **{k: b for k, (_, b) in VARIANTS.items()}}[model_name](target.dim)
    asinh = model_name in ASINH
    fit = train.fit(model, Asinh(target) if asinh else target,
                    generator=torch.Generator().manual_seed(seed), progress=False)
    sample = (lambda n, g=None: torch.sinh(model.sample(n, g))) if asinh else model.sample
    record = dict(model=model_name, target=target_name, dim=target.dim, seed=seed,
                  train_wall=fit.wall, train_cpu=fit.cpu, n_steps=fit.settings["n_steps"])
    g, cpu = torch.Generator().manual_seed(1000 + seed), time.process_time()
    with torch.no_grad():
        rho = metrics.noise_floor_ratio(sample, target, n=N_1D if target.dim == 1 else N_2D,
                                        n_repeats=N_REPEATS[target.dim], seed=seed)
        record.update(ratio=float(rho), ratio_se=rho.se)
        if target.dim > 1:
            record["c2st"] = metrics.c2st(sample(N_C2ST, g).double(),
                                          target.sample(N_C2ST, g, dtype=torch.float64), seed=seed)
    record["measure_cpu"] = time.process_time() - cpu
    print(f"{model_name:>14} {target_name:>16} seed {seed}: ratio {rho!r}"
          + (f", c2st {record['c2st']:.3f}" if "c2st" in record else "")
          + f", trained in {fit.cpu:.1f} CPU s ({fit.wall:.1f} s wall)", flush=True)
    if path is not None:
        path.write_text(json.dumps(record))
    return record


def _summary(values: list[float], n_seeds: int, fmt: str = ".2f") -> str:
    if not values:
        return "not run"
    text = f"{statistics.median(values):{fmt}} [{min(values):{fmt}}, {max(values):{fmt}}]"
    return text + (f" ({len(values)} seed{'s' * (len(values) > 1)})" if len(values) < n_seeds else "")


NOTES = "<!-- notes: text below this line is kept when the tables are rewritten -->"


def markdown(records: list[dict], seeds: list[int], notes: str = "") -> str:
    """Tables of median [min, max] over seeds: per target (rows) and model (columns), then the
    goals each cell misses and ``notes`` (kept from the previous file, below :data:`NOTES`)."""
    models = [m for m in [*MODELS, *VARIANTS] if any(r["model"] == m for r in records)]
    ses = sorted(r["ratio_se"] for r in records)
    out = ["# Transfer: every model's default recipe on every target", "",
           f"Seeds {seeds}; median [min, max] over seeds (a cell run on fewer seeds says so). "
           f"Written by `benchmarks/transfer.py` on {os.cpu_count()} shared cores, one thread per "
           f"run. Standard errors of the single noise-floor ratios ({N_REPEATS[1]} model samples "
           f"in 1D, {N_REPEATS[2]} in 2D): median {statistics.median(ses):.2f}, largest "
           f"{ses[-1]:.2f}.", ""]
    sections = [("1D: W1 noise-floor ratio (n = 20,000)", 1, "ratio", ".2f"),
                ("2D: classifier two-sample test (2,000 points each; 0.5 = indistinguishable)", 2,
                 "c2st", ".3f"),
                ("2D: sliced-Wasserstein noise-floor ratio (n = 4,000)", 2, "ratio", ".2f"),
                ("Training CPU seconds (one thread; the budget is 30 s)", None, "train_cpu", ".1f"),
                ("Training wall seconds (on shared, busy cores)", None, "train_wall", ".0f")]
    for title, dim, key, fmt in sections:
        rows = [r for r in records if dim is None or r["dim"] == dim]
        targets = list(dict.fromkeys(r["target"] for r in rows))
        out += [f"## {title}", "", "| target | " + " | ".join(models) + " |",
                "|---" * (len(models) + 1) + "|"]
        for t in targets:
            cells = [_summary([r[key] for r in rows if r["target"] == t and r["model"] == m],
                              len(seeds), fmt) for m in models]
            out.append(f"| {t} | " + " | ".join(cells) + " |")
        out.append("")
    goals = "; ".join(f"{m}: ratio <= {a}, C2ST <= {b}" for m, (a, b) in GOALS.items()) + \
        f"; each trained in <= {BUDGET_CPU} CPU seconds."
    out += ["## Goals (per target, median over seeds)", "", goals, ""]
    misses = []
    for m in models:
        for t in dict.fromkeys(r["target"] for r in records):
            rs = [r for r in records if r["model"] == m and r["target"] == t]
            if not rs:
                continue
            family = VARIANTS[m][0] if m in VARIANTS else m
            key, goal = ("ratio", GOALS[family][0]) if rs[0]["dim"] == 1 else ("c2st", GOALS[family][1])
            med = statistics.median(r[key] for r in rs)
            if med > goal:
                misses.append(f"- {m} on {t}: {key} {med:.3f} > {goal}")
            if max(r["train_cpu"] for r in rs) > BUDGET_CPU:
                misses.append(f"- {m} on {t}: trained in up to {max(r['train_cpu'] for r in rs):.0f}"
                              f" CPU s > {BUDGET_CPU}")
    out += ["Misses:" if misses else "Every goal holds.", ""] + misses + ["", NOTES]
    return "\n".join(out) + (notes or "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS) + list(VARIANTS),
                        default=list(MODELS))
    parser.add_argument("--targets", nargs="+", choices=list(data.targets()),
                        default=list(data.targets()))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes (default 2)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="keep one JSON per completed run in this folder and reuse it")
    parser.add_argument("--cached-only", action="store_true",
                        help="run nothing: write the tables from the runs found in --cache")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "transfer",
                        help="output stem: writes STEM.json and STEM.md")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    if args.cache is not None:
        args.cache.mkdir(parents=True, exist_ok=True)
    jobs = [(m, t, s, args.cache) for t in args.targets for m in args.models for s in args.seeds]
    start = time.perf_counter()
    if args.cached_only:
        if args.cache is None:
            parser.error("--cached-only needs --cache")
        records = [run_one(job) for job in jobs if _path(*job).exists()]
    else:
        with mp.get_context("spawn").Pool(args.jobs) as pool:
            records = pool.map(run_one, jobs, chunksize=1)
    print(f"{len(records)} of {len(jobs)} runs in {time.perf_counter() - start:.0f} s")
    old = args.out.with_suffix(".md")
    notes = old.read_text().partition(NOTES)[2] if old.exists() else ""
    for suffix, text in [(".json", json.dumps(records, indent=1)),
                         (".md", markdown(records, args.seeds, notes))]:
        path = args.out.with_suffix(suffix)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as f:
            f.write(text)
        os.replace(f.name, path)  # only a completed grid replaces recorded results
    return 0


if __name__ == "__main__":
    sys.exit(main())
