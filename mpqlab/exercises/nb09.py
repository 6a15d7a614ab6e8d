"""Exercises of notebook 09 (depthwise / pointwise sensitivity): values per level, normalised degradation, a fitted slope."""

from __future__ import annotations

import math

import torch

from mpqlab.exercises import FAILED, describe, exercise


def count_per_level_solution(x, scale, bits):
    # signed grid [-2^(b-1), 2^(b-1) - 1]; count each distinct real value once, on the level it rounds to
    q_min, q_max = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    levels = torch.clamp(torch.round(torch.unique(x) / scale), q_min, q_max).long()
    return {q: int((levels == q).sum()) for q in range(q_min, q_max + 1)}


def normalised_degradation_solution(acc_ref, accs):
    # the loss of each run, divided by the largest loss: the worst run reads 1
    d = [acc_ref - a for a in accs]
    return [v / max(d) for v in d]


def slope_solution(x, y):
    # least squares: slope = sum((x - mean x)(y - mean y)) / sum((x - mean x)^2)
    mx, my = sum(x) / len(x), sum(y) / len(y)
    return sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)


@exercise("distinct values per level", count_per_level_solution,
          hint="count torch.unique(x) once each; values beyond the grid clip onto the end levels")
def check_count_per_level(c, fn) -> None:
    """Exercise 1: ``fn(x, scale, bits)`` returns ``{level: number of distinct values of x on it}`` (signed grid)."""
    x = torch.tensor([-0.9, -0.31, -0.31, -0.05, 0.0, 0.04, 0.12, 0.26, 0.26, 0.49, 0.77, 1.6])
    for scale, bits in [(0.25, 2), (0.1, 3), (0.5, 2), (0.05, 4)]:
        want = count_per_level_solution(x, scale, bits)
        got = c.run(fn, x, scale, bits)
        if got is FAILED:  # the reason is recorded: one message is enough
            break
        try:
            ok = {int(k): int(v) for k, v in dict(got).items() if int(v) != 0} == {k: v for k, v in want.items() if v}
        except (TypeError, ValueError):
            ok = False
        c.expect(ok, f"scale={scale}, bits={bits}: expected {want}, got {describe(got)}")


@exercise("normalised accuracy degradation", normalised_degradation_solution,
          hint="degradation is reference minus run (a gain is negative); divide by the largest one")
def check_normalised_degradation(c, fn) -> None:
    """Exercise 2: ``fn(acc_ref, accs)`` returns ``(acc_ref - acc_i) / max_j (acc_ref - acc_j)`` for every run."""
    for acc_ref, accs in [(0.92, [0.91, 0.90, 0.80]), (0.9, [0.5, 0.85, 0.91, 0.9]), (0.75, [0.70])]:
        want = normalised_degradation_solution(acc_ref, accs)
        got = c.run(fn, acc_ref, accs)
        if got is FAILED:
            break
        try:
            got = [float(v) for v in got]
            ok = len(got) == len(want) and all(math.isclose(g, w, abs_tol=1e-9) for g, w in zip(got, want))
        except (TypeError, ValueError):
            ok = False
        c.expect(ok, f"acc_ref={acc_ref}, accs={accs}: expected {want}, got {describe(got)}")


@exercise("slope of a linear fit", slope_solution,
          hint="slope = sum((x - mean x)(y - mean y)) / sum((x - mean x)^2)")
def check_slope(c, fn) -> None:
    """Exercise 3: ``fn(x, y)`` returns the least-squares slope of y against x."""
    for x, y in [([0.0, 1.0, 2.0], [1.0, 3.0, 5.0]), ([0.1, 0.2, 0.4, 0.8], [0.0, 0.3, 0.2, 1.0]),
                 ([5.0, 1.0], [2.0, 2.0])]:
        want = slope_solution(x, y)
        got = c.run(fn, x, y)
        if got is FAILED:
            break
        c.close(got, want, f"x={x}, y={y}", rel=1e-6, abs_=1e-9)
