"""Comparing bit-width criteria over paired seeds: the numbers behind notebook 10's verdict.

``points`` are the rows of ``data/results/limpq_pareto.json`` (``mpqlab.experiments.limpq_pareto``):
dicts with ``method``, ``budget_bits``, ``seed``, ``accuracy`` (in [0, 1]) and ``bitops``. Every method
ran with the same seeds, and seed s fixes the fine-tune's data order for all of them, so for two
methods at one budget the accuracies of seed s form a pair; the paired differences
d_s = acc_A(s) - acc_B(s) go into ``mpqlab.stats.paired_difference`` (mean and 95% interval).
Accuracies are reported in percentage points.
"""

from __future__ import annotations

import pandas as pd

from mpqlab.errors import DataFileError
from mpqlab.stats import Interval, paired_difference, verdict


def points_frame(points) -> pd.DataFrame:
    """The points as a DataFrame with accuracy in percent; checks the keys every comparison needs."""
    frame = pd.DataFrame(list(points))
    missing = [k for k in ("method", "budget_bits", "seed", "accuracy") if k not in frame.columns]
    if frame.empty or missing:
        raise DataFileError(f"points need keys method, budget_bits, seed, accuracy; missing {missing or 'all'}")
    duplicated = frame.duplicated(["method", "budget_bits", "seed"])
    if duplicated.any():
        row = frame[duplicated].iloc[0]
        raise DataFileError(f"point {row.method} @ {row.budget_bits} bits, seed {row.seed} appears twice")
    return frame.assign(accuracy=100 * frame.accuracy)


def summary_table(points) -> pd.DataFrame:
    """Mean, sd and number of seeds of the accuracy (%) per method and budget (rows: method, budget_bits)."""
    frame = points_frame(points)
    table = frame.groupby(["method", "budget_bits"]).accuracy.agg(mean="mean", sd="std", seeds="count")
    if "bitops" in frame.columns:
        table["bitops (M)"] = frame.groupby(["method", "budget_bits"]).bitops.mean() / 1e6
    return table


def paired_differences(points, method: str = "limpq", against=None) -> dict[tuple[str, int], Interval]:
    """``{(other method, budget_bits): Interval of acc(method) - acc(other)}`` over the seeds both have.

    Only budgets where ``method`` ran are compared; the float points (one per seed, at any budget)
    pair with every budget. ``against`` lists the other methods (default: all but ``method``).
    """
    frame = points_frame(points)
    acc = frame.pivot_table(index=["budget_bits", "seed"], columns="method", values="accuracy")
    if method not in acc.columns:
        raise DataFileError(f"no points of method {method!r}; have {sorted(acc.columns)}")
    floats = frame[frame.method == "float"].set_index("seed").accuracy
    others = [m for m in (against or sorted(frame.method.unique())) if m != method]
    out = {}
    for b in sorted(frame[frame.method == method].budget_bits.unique()):
        mine = acc.loc[b][method].dropna()
        for other in others:
            theirs = floats if other == "float" else acc.loc[b].get(other, pd.Series(dtype=float)).dropna()
            seeds = mine.index.intersection(theirs.index)
            if len(seeds) >= 2:
                out[(other, int(b))] = paired_difference(mine[seeds].values, theirs[seeds].values)
    return out


def difference_table(diffs: dict[tuple[str, int], Interval], method: str = "limpq") -> pd.DataFrame:
    """The intervals of ``paired_differences`` as a table (points): mean, sd, 95% low and high, seeds."""
    rows = [{"comparison": f"{method} - {other}", "budget": f"W{b}A{b}", "mean": d.mean, "sd": d.sd,
             "95% low": d.low, "95% high": d.high, "seeds": d.n, "detectable": d.detectable}
            for (other, b), d in diffs.items()]
    return pd.DataFrame(rows).set_index(["comparison", "budget"])


def verdicts(diffs: dict[tuple[str, int], Interval], method: str = "limpq") -> list[str]:
    """One computed sentence per comparison (``mpqlab.stats.verdict``)."""
    return [verdict(method, other, d, where=f"at the W{b}A{b} budget") for (other, b), d in diffs.items()]


def policy_summary(points, seed: int, layers, reference: str = "limpq", skip=("float", "random")) -> pd.DataFrame:
    """How the policies of seed ``seed`` differ, per (method, budget_bits): of the searched ``layers``, those
    whose (w_bits, a_bits) differ from ``reference``'s at that budget, those at 2 bits on each side, and the
    mean bit-widths.

    The first conv and the classifier stay at 8 bits in every policy, so pass only the searched layers. The criteria's
    policies do not depend on the seed (it only changes the fine-tune's data order), so one seed shows them.
    """
    frame = points_frame(points)
    chosen = frame[(frame.seed == seed) & ~frame.method.isin(skip) & frame.policy.notna()]
    if chosen.empty:
        raise DataFileError(f"no policies for seed {seed} (methods other than {list(skip)})")
    rows = {}
    for (method, budget_bits), row in chosen.set_index(["method", "budget_bits"]).iterrows():
        ref = chosen[(chosen.method == reference) & (chosen.budget_bits == budget_bits)]
        if ref.empty:
            raise DataFileError(f"no {reference} policy at {budget_bits} bits for seed {seed}")
        ref_policy, layers = ref.policy.iloc[0], list(layers)
        missing = [n for n in layers if n not in row.policy or n not in ref_policy]
        if missing:
            raise DataFileError(f"{method} @ {budget_bits} bits: no bit-widths for layers {missing}")
        pairs = [tuple(row.policy[n]) for n in layers]
        rows[(method, budget_bits)] = {
            f"layers differing from {reference}": sum(p != tuple(ref_policy[n]) for p, n in zip(pairs, layers)),
            "2-bit weights": sum(w == 2 for w, _ in pairs), "2-bit activations": sum(a == 2 for _, a in pairs),
            "mean w_bits": sum(w for w, _ in pairs) / len(pairs), "mean a_bits": sum(a for _, a in pairs) / len(pairs)}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(["method", "budget_bits"]).sort_index()
