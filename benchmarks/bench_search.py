"""How fast and how exact is the LIMPQ bit-width search? HiGHS (ours) against CBC, in the same run.

    python benchmarks/bench_search.py [--repeats 3]

1. Synthetic 27-layer instances with 5 bit options (25 (b_w, b_a) pairs per layer), budgets W3A4
   BitOps and/or compression ratio 10: median solve time with HiGHS and with PuLP's bundled CBC on
   the same ILP, and whether the two agree on the objective.
2. LIMPQ's ResNet-50 indicators (if ../shared/fixtures is there): our search, and LIMPQ's own
   formulation (every pair kept, banned ones priced 1e8, raw costs) under CBC's default options,
   which stops 1e-5 short of the optimum.

Times are CPU seconds of this process and its children (CBC runs as a subprocess), so that other
jobs on a shared machine do not inflate them; wall time is printed alongside.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from pathlib import Path

import pandas as pd
import pulp

from mpqlab.limpq.indicators import load_indicators, synthetic_indicators
from mpqlab.limpq.search import allowed_bits, size_budget, solve_policy, uniform_budget

FIXTURE = Path(__file__).resolve().parents[2] / "shared/fixtures/limpq_resnet50_indicators.json"
OPTIONS = [6, 5, 4, 3, 2]
TARGET_S = 0.1  # the notebook widget's goal: a 27-layer search well under a tenth of a second


def cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn):
    cpu, wall = cpu_seconds(), time.perf_counter()
    out = fn()
    return out, cpu_seconds() - cpu, time.perf_counter() - wall


def limpq_reference(ind, bitops_budget, size_budget_bits, alpha=2.0):
    """LIMPQ's own ILP, rebuilt for comparison: all 25 pairs, banned bit-widths priced 1e8, raw costs, CBC."""
    penalty = 1e8

    def price(scores, b):
        return scores[b] if b in allowed_bits(scores, OPTIONS) else penalty

    problem = pulp.LpProblem("limpq_reference", pulp.LpMinimize)
    x = {(n, bw, ba): problem.add_variable(f"x_{i}_{bw}_{ba}", cat=pulp.LpBinary)
         for i, n in enumerate(ind.layer_names) for bw in OPTIONS for ba in OPTIONS}
    problem += pulp.lpSum((price(ind.act_indicators[n], ba) + alpha * price(ind.weight_indicators[n], bw)) * v
                          for (n, bw, ba), v in x.items())
    for n in ind.layer_names:
        problem += pulp.lpSum(x[n, bw, ba] for bw in OPTIONS for ba in OPTIONS) == 1
    problem += pulp.lpSum(ind.layer_macs[n] * bw * ba * v for (n, bw, ba), v in x.items()) <= bitops_budget
    fixed = sum(f.params * f.w_bits for f in ind.fixed_layers.values())
    problem += fixed + pulp.lpSum(ind.layer_params[n] * bw * v for (n, bw, _), v in x.items()) <= size_budget_bits
    problem.solve(pulp.PULP_CBC_CMD(msg=False))
    chosen = [(n, bw, ba) for (n, bw, ba), v in x.items() if v.value() > 0.5]
    return sum(ind.act_indicators[n][ba] + alpha * ind.weight_indicators[n][bw] for n, bw, ba in chosen)


def bench_synthetic(repeats: int) -> pd.DataFrame:
    rows = []
    for budgets in ("bitops", "size", "both"):
        for seed in range(5):
            ind = synthetic_indicators(27, OPTIONS, seed=seed)
            bitops = uniform_budget(ind, 3, 4) if budgets != "size" else None
            size = size_budget(ind, 10.0) if budgets != "bitops" else None
            for solver in ("highs", "cbc"):
                runs = [timed(lambda: solve_policy(ind, OPTIONS, bitops, size, solver=solver)) for _ in range(repeats)]
                rows.append(dict(budgets=budgets, seed=seed, solver=solver, objective=runs[0][0].objective,
                                 cpu_s=statistics.median(r[1] for r in runs),
                                 wall_s=statistics.median(r[2] for r in runs)))
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")

    df = bench_synthetic(args.repeats)
    table = df.pivot_table(index="budgets", columns="solver", values=["cpu_s", "wall_s"], aggfunc="median")
    table[("cbc / highs", "cpu")] = table[("cpu_s", "cbc")] / table[("cpu_s", "highs")]
    print("27 layers x 25 pairs, median over 5 instances x", args.repeats, "repeats (seconds)")
    print(table.round(3).to_string(), "\n")
    objectives = df.pivot_table(index=["budgets", "seed"], columns="solver", values="objective")
    gap = objectives["cbc"] - objectives["highs"]
    print(f"objective cbc - highs: min {gap.min():.2e}, max {gap.max():.2e} "
          f"(> 0 means CBC stopped short; < 0 would mean HiGHS missed the optimum)")
    median_highs = df[df.solver == "highs"].cpu_s.median()
    verdict = "meets" if median_highs < TARGET_S else "MISSES"
    print(f"HiGHS median {median_highs:.3f} CPU-s per 27-layer search: {verdict} the {TARGET_S} s target\n")

    if not FIXTURE.exists():
        print(f"(LIMPQ fixture not found at {FIXTURE}: ResNet-50 comparison skipped)")
        return
    ind = load_indicators(FIXTURE)
    bitops, size = uniform_budget(ind, 3, 4), size_budget(ind, 12.2)
    print("LIMPQ ResNet-50 (52 layers), W3A4 BitOps + compression 12.2, published objective 4.6174392")
    for label, fn in [("ours, HiGHS", lambda: solve_policy(ind, OPTIONS, bitops, size).objective),
                      ("ours, CBC", lambda: solve_policy(ind, OPTIONS, bitops, size, solver="cbc").objective),
                      ("LIMPQ's ILP, CBC", lambda: limpq_reference(ind, bitops, size))]:
        objective, cpu, wall = timed(fn)
        print(f"  {label:18s} objective {objective:.7f}   {cpu:.3f} CPU-s   {wall:.3f} s wall")


if __name__ == "__main__":
    main()
