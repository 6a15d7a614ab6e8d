"""How fast and how exact is the LIMPQ bit-width search? HiGHS (ours) against CBC, in the same run.

    python benchmarks/bench_search.py [--repeats 3]

1. The shipped MobileNetV1-small indicators (26 searchable layers x 25 (b_w, b_a) pairs, the
   notebook-10 problem; target: median under 0.1 s) at budgets W2.5A2.5 .. W5A5, BitOps alone and
   with a size budget, and synthetic 27-layer instances with 5 bit options, budgets W3A4 BitOps
   and/or compression ratio 10. Median solve time with HiGHS, with HiGHS on the full ILP
   (``presolve=False``: no reduced-cost reduction) and with PuLP's bundled CBC, and whether all
   agree on the objective.
2. One notebook-10 panel update end to end on the shipped MobileNetV1-small indicators, as the
   panel does it: ``render_search`` (solve + new bar heights in the kept ``PolicyChart``) and the PNG
   the widget shows (``PolicyChart.png``: the saved background plus the bars), target under 0.2 s; against the solve alone, a new figure per
   update, and a new figure with ``tight_layout`` (session 1's panel). The split says where the time goes.
3. LIMPQ's released ResNet-50 indicators (data/results/limpq_resnet50_paper.json): our search, and LIMPQ's own
   formulation (every pair kept, banned ones priced 1e8, raw costs) under CBC's default options,
   which stops 1e-5 short of the optimum.

Times are CPU seconds of this process and its children (CBC runs as a subprocess), so that other
jobs on a shared machine do not inflate them; wall time is printed alongside.
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import statistics
import sys
import time

import matplotlib

matplotlib.use("Agg")
import pandas as pd  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import print_ratio_table  # noqa: E402

from mpqlab.data import repo_data_dir  # noqa: E402
from mpqlab.experiments.convert_limpq_resnet50 import limpq_ilp, paper_budgets  # noqa: E402
from mpqlab.limpq.indicators import load_indicators, synthetic_indicators  # noqa: E402
from mpqlab.limpq.search import size_budget, solve_policy, uniform_budget  # noqa: E402
from mpqlab.plots import figure_png  # noqa: E402
from mpqlab.widgets.search_panel import PolicyChart, render_search, search_state, slider_ranges  # noqa: E402

FIXTURE = repo_data_dir() / "results" / "limpq_resnet50_paper.json"  # the paper's released indicators, shipped
OPTIONS = [6, 5, 4, 3, 2]
SHIPPED = repo_data_dir() / "results" / "limpq_mobilenet_v1_small.json"
TARGET_S = 0.1  # the notebook widget's goal: a 27-layer search well under a tenth of a second
PANEL_TARGET_S = 0.2  # one slider change redrawn within a fifth of a second
SOLVERS = {"highs": dict(solver="highs"), "highs, full ILP": dict(solver="highs", presolve=False),
           "cbc": dict(solver="cbc")}


def cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn):
    cpu, wall = cpu_seconds(), time.perf_counter()
    out = fn()
    return out, cpu_seconds() - cpu, time.perf_counter() - wall


def cases():
    """(problem, budgets, instance, indicators, BitOps budget, size budget) of every benchmarked search."""
    out = []
    if SHIPPED.is_file():
        ind = load_indicators(SHIPPED)
        for bits in (2.5, 3.0, 3.5, 4.0, 4.5, 5.0):
            bitops = uniform_budget(ind, 4, 4) * (bits / 4) ** 2
            out.append(("MobileNetV1-small", "bitops", bits, ind, bitops, None))
            out.append(("MobileNetV1-small", "both", bits, ind, bitops, size_budget(ind, 32 / bits)))
    for budgets in ("bitops", "size", "both"):
        for seed in range(5):
            ind = synthetic_indicators(27, OPTIONS, seed=seed)
            bitops = uniform_budget(ind, 3, 4) if budgets != "size" else None
            size = size_budget(ind, 10.0) if budgets != "bitops" else None
            out.append(("synthetic 27 layers", budgets, seed, ind, bitops, size))
    return out


def bench_cases(repeats: int) -> pd.DataFrame:
    rows = []
    for problem, budgets, instance, ind, bitops, size in cases():
        for solver, kwargs in SOLVERS.items():
            runs = [timed(lambda: solve_policy(ind, OPTIONS, bitops, size, **kwargs)) for _ in range(repeats)]
            rows.append(dict(problem=problem, budgets=budgets, instance=instance, solver=solver,
                             objective=runs[0][0].objective, cpu_s=statistics.median(r[1] for r in runs),
                             wall_s=statistics.median(r[2] for r in runs)))
    return pd.DataFrame(rows)


def bench_panel(repeats: int) -> None:
    """Median time of one panel update, the budgets cycling through W2.5A2.5 .. W5A5."""
    ind = load_indicators(SHIPPED)
    kinds = {n: "depthwise" if n.startswith("dw") else "pointwise" for n in ind.layer_names}
    size = slider_ranges(ind, OPTIONS)["size_mb"][1] * 8e6  # the size slider's start: the panel always sends one
    budgets = [uniform_budget(ind, 4, 4) * (b / 4) ** 2 for b in (2.5, 3.0, 3.5, 4.0, 4.5, 5.0)]

    def fresh_update(cycle, tight_layout=False):  # a new figure on every update (the panel before)
        def run():
            _, fig, _ = render_search(ind, kinds, next(cycle), size, OPTIONS)
            if tight_layout:
                fig.tight_layout()
            figure_png(fig)
        return run

    # What the panel does: one PolicyChart kept across updates, redrawn by blitting only the bars.
    chart = PolicyChart.draw(search_state(ind, budgets[0], size, OPTIONS).result, kinds)
    panel_budgets, solves = itertools.cycle(budgets), itertools.cycle(budgets)

    def panel_update():
        render_search(ind, kinds, next(panel_budgets), size, OPTIONS, chart=chart)
        chart.png()

    candidates = {"solve only (search_state)": lambda: search_state(ind, next(solves), size, OPTIONS),
                  "update: render_search + PNG": panel_update,
                  "new figure per update": fresh_update(itertools.cycle(budgets)),
                  "new figure + tight_layout (session 1)": fresh_update(itertools.cycle(budgets), tight_layout=True)}
    cpu = {name: [] for name in candidates}
    wall = {name: [] for name in candidates}
    for name, fn in candidates.items():  # warm-up
        fn()
    for _ in range(repeats):  # interleaved, so load changes hit every candidate alike
        for name, fn in candidates.items():
            _, c, w = timed(fn)
            cpu[name].append(c)
            wall[name].append(w)
    cpu = {name: statistics.median(t) for name, t in cpu.items()}
    print_ratio_table("panel update on MobileNetV1-small (CPU seconds; the ratio is to the update)", cpu,
                      "update: render_search + PNG")
    update_cpu, update_wall = cpu["update: render_search + PNG"], statistics.median(wall["update: render_search + PNG"])
    verdict = "meets" if update_cpu < PANEL_TARGET_S else "MISSES"
    print(f"panel update median {update_cpu:.3f} CPU-s ({update_wall:.3f} s wall): {verdict} the "
          f"{PANEL_TARGET_S} s target\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--panel-repeats", type=int, default=12)
    parser.add_argument("--panel-only", action="store_true", help="only the panel update (part 2)")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
    if args.panel_only:
        bench_panel(args.panel_repeats)
        return

    df = bench_cases(args.repeats)
    table = df.pivot_table(index=["problem", "budgets"], columns="solver", values="cpu_s", aggfunc="median")
    table["full / highs"] = table["highs, full ILP"] / table["highs"]
    table["cbc / highs"] = table["cbc"] / table["highs"]
    print(f"median CPU seconds per search over instances x {args.repeats} repeats "
          "(MobileNetV1: 6 budgets W2.5A2.5..W5A5; synthetic: 5 seeds, W3A4 / ratio 10)")
    print(table.round(3).to_string(), "\n")
    objectives = df.pivot_table(index=["problem", "budgets", "instance"], columns="solver", values="objective")
    for other in ("highs, full ILP", "cbc"):
        gap = objectives[other] - objectives["highs"]
        print(f"objective {other} - highs: min {gap.min():.2e}, max {gap.max():.2e} "
              f"(> 0: the other stopped short; < 0 would mean ours missed the optimum)")
    for problem, group in df[df.solver == "highs"].groupby("problem", sort=False):
        full = df[(df.solver == "highs, full ILP") & (df.problem == problem)].cpu_s.median()
        median = group.cpu_s.median()
        verdict = "meets" if median < TARGET_S else "MISSES"
        print(f"{problem}: HiGHS median {median:.3f} CPU-s per search (max {group.cpu_s.max():.3f}), "
              f"full ILP {full:.3f} ({full / median:.1f}x): {verdict} the {TARGET_S} s target")
    print()
    if SHIPPED.is_file():
        bench_panel(args.panel_repeats)

    if not FIXTURE.exists():
        print(f"(LIMPQ fixture not found at {FIXTURE}: ResNet-50 comparison skipped)")
        return
    ind = load_indicators(FIXTURE)
    bitops, size = paper_budgets(ind)  # W3A4 BitOps and compression 12.2, as LIMPQ's README runs it
    print("LIMPQ ResNet-50 (52 layers), W3A4 BitOps + compression 12.2, published objective 4.6174392")
    for label, fn in [("ours, HiGHS", lambda: solve_policy(ind, OPTIONS, bitops, size).objective),
                      ("ours, CBC", lambda: solve_policy(ind, OPTIONS, bitops, size, solver="cbc").objective),
                      ("LIMPQ's ILP, CBC", lambda: limpq_ilp(ind).objective)]:
        objective, cpu, wall = timed(fn)
        print(f"  {label:18s} objective {objective:.7f}   {cpu:.3f} CPU-s   {wall:.3f} s wall")


if __name__ == "__main__":
    main()
