"""Statistics for comparisons across seeds: mean +- sd, and paired differences with a 95% interval.

A claim "A beats B" in the workbook rests on runs repeated with several seeds, the same seeds for A and
B (the seed fixes the data order, so run i of A and run i of B share it and their difference is
*paired*). For paired differences d_i = a_i - b_i, i = 1..n, the 95% interval of the mean difference is

    mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n)          (Student's t, n - 1 degrees of freedom)

If it excludes 0 the difference is detectable at that level; if not, "no difference we can detect".
The t quantile is computed here (numerical integration of Student's density and bisection), so the
package needs no SciPy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mpqlab.errors import DataFileError, TensorValueError


def t_cdf(x: float, df: int) -> float:
    """P(T <= x) for Student's t with ``df`` degrees of freedom (Simpson's rule on the density)."""
    if df < 1:
        raise TensorValueError(f"degrees of freedom must be >= 1, got {df}")
    if x < 0:
        return 1.0 - t_cdf(-x, df)
    # lgamma, not gamma: gamma overflows past df ~ 340, and paired comparisons can have that many pairs
    norm = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    n = 2000  # even; the density is smooth, so this is exact to ~1e-10 on [0, x] for x < 100
    h = x / n
    ys = [norm * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(n + 1)]
    area = h / 3 * (ys[0] + ys[-1] + 4 * sum(ys[1:-1:2]) + 2 * sum(ys[2:-1:2]))
    return 0.5 + area


def t_quantile(p: float, df: int) -> float:
    """x with P(T <= x) = p, for 0.5 <= p < 1 (bisection on ``t_cdf``); t_quantile(0.975, 4) = 2.776."""
    if not 0.5 <= p < 1:
        raise TensorValueError(f"p must be in [0.5, 1), got {p}")
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


@dataclass(frozen=True)
class Interval:
    """Mean of n values with its sample sd and a two-sided confidence interval [low, high]."""

    mean: float
    sd: float
    low: float
    high: float
    n: int

    @property
    def detectable(self) -> bool:
        """True if the interval excludes 0 (the sign of the mean is established at this level)."""
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"


def mean_interval(values, level: float = 0.95) -> Interval:
    """mean +- t_{(1+level)/2, n-1} * sd / sqrt(n) of ``values`` (n >= 2 finite numbers)."""
    x = np.asarray(values, dtype=float).ravel()
    if x.size < 2 or not np.isfinite(x).all():
        raise TensorValueError(f"need at least 2 finite values for an interval, got {x.tolist()}")
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    half = t_quantile((1 + level) / 2, x.size - 1) * sd / math.sqrt(x.size)
    return Interval(mean, sd, mean - half, mean + half, int(x.size))


def paired_difference(a, b, level: float = 0.95) -> Interval:
    """Interval of mean(a_i - b_i) for paired runs (same seeds, same order)."""
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise TensorValueError(f"paired runs need the same number of values, got {a.size} and {b.size}")
    return mean_interval(a - b, level)


def verdict(name_a: str, name_b: str, diff: Interval, unit: str = "points", where: str = "",
            verb: str = "beats", paired: str = "paired seeds") -> str:
    """A sentence computed from a paired interval: who is ahead and by how much, or no detectable difference.

    ``verb`` says what being ahead means (``"loses more than"`` when the difference is a loss), ``paired``
    what the ``diff.n`` paired values are (``"paired (pair, seed) runs"`` when each seed gives several).
    """
    at = f" {where}" if where else ""
    if not diff.detectable:
        return (f"{name_a} vs {name_b}{at}: no difference we can detect ({diff.mean:+.2f} {unit}, 95% interval "
                f"[{diff.low:+.2f}, {diff.high:+.2f}], {diff.n} {paired})")
    lead, trail = (name_a, name_b) if diff.mean > 0 else (name_b, name_a)
    half = (diff.high - diff.low) / 2
    return (f"{lead} {verb} {trail}{at} by {abs(diff.mean):.2f} +- {half:.2f} {unit} (95% interval over "
            f"{diff.n} {paired})")


def seed_values(rows: list[dict], value, seeds, **match) -> list[float]:
    """One number per seed, in the order of ``seeds``, from the result rows whose fields equal ``match``.

    ``value`` is a row key (``"accuracy"``) or a function of the row. Index i of two calls with the same
    ``seeds`` is the same seed, so the two lists are *paired* (``paired_difference``). A seed whose run is
    missing, stopped with an ``"error"``, or lacks ``value`` raises ``DataFileError`` naming it: a comparison
    must never silently pair fewer seeds than the text says.
    """
    picked = {row["seed"]: row for row in rows if all(row.get(k) == v for k, v in match.items())}
    missing = [s for s in seeds if s not in picked or "error" in picked[s]
               or (not callable(value) and value not in picked[s])]
    if missing:
        errors = [str(picked[s]["error"]) for s in missing if s in picked and "error" in picked[s]]
        raise DataFileError(f"no finished run with {match} for seed(s) {missing} (seeds wanted {list(seeds)}, "
                            f"have {sorted(picked)}); " + ("errors: " + "; ".join(errors) if errors
                                                            else f"no {value!r} in the file"))
    return [value(picked[s]) if callable(value) else picked[s][value] for s in seeds]


def rank_correlation(a, b) -> float:
    """Spearman's rank correlation: the Pearson correlation of the ranks of ``a`` and of ``b``.

        rho = corr(rank(a), rank(b)),   tied values share their mean rank

    1 means the same ordering, -1 the reverse. Computed here so the package needs no SciPy.
    """
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape or a.size < 2:
        raise TensorValueError(f"need two sequences of the same length >= 2, got lengths {a.size} and {b.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise TensorValueError("rank correlation needs finite values")
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        raise TensorValueError("rank correlation is undefined when one sequence is constant")
    return float(np.corrcoef(ra, rb)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties replaced by their mean rank."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.size)
    ranks[order] = np.arange(1, x.size + 1)
    ordered = np.sort(x)
    for value in np.unique(ordered[1:][np.diff(ordered) == 0]):
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks
