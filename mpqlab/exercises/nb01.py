"""Exercises of notebook 01 (uniform quantization): quantize, choose (scale, zero_point), requantize with integers."""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from mpqlab.exercises import FAILED, describe, exercise


def linear_quantize_solution(x, scale, zero_point, q_min, q_max):
    # q = clamp(round(x / s) + z, q_min, q_max); torch.round rounds halves to even, like the package
    return (torch.round(x / scale) + zero_point).clamp(q_min, q_max).to(torch.int32)


def qparams_solution(x_min, x_max, bits):
    # widen the range to contain 0, spread it over 2^b - 1 steps, and put real 0 on an integer code
    x_min, x_max = min(x_min, 0.0), max(x_max, 0.0)
    q_min, q_max = 0, 2**bits - 1
    scale = (x_max - x_min) / (q_max - q_min) if x_max > x_min else 1.0
    zero_point = min(max(q_min - round(x_min / scale), q_min), q_max)
    return scale, zero_point


def requantize_solution(acc, m0, shift, zero_point, q_min, q_max):
    # M * acc = acc * m0 / 2^(31 + shift): add half of the divisor, then shift right (floor) = round
    total_shift = 31 + shift
    scaled = (acc * m0 + (1 << (total_shift - 1))) >> total_shift
    return min(max(zero_point + scaled, q_min), q_max)


TIE_NOTE = ("where x / scale is exactly 2.5, -2.5, 1.5, ..., round like the package (mpqlab.quant.uniform.quantize): "
            "halves go to the even integer, as torch.round does (2.5 -> 2, -2.5 -> -2, 1.5 -> 2); "
            "floor(v + 0.5) and round-half-away-from-zero do not")


def _linear_quantize_cases():
    """(args, label, ties): ordinary values, then exact ties (x / scale = k + 1/2, exact for power-of-two scales)."""
    x = torch.tensor([-1.3, -0.26, 0.0, 0.1, 0.24, 0.9, 2.6])
    halves = torch.tensor([1.25, -1.25, 0.75, -0.75, 0.25, -0.25, 1.75, 0.0])  # / 0.5 = 2.5, -2.5, 1.5, ...
    cases = [((x, s, z, lo, hi), f"scale={s}, zero_point={z}, range [{lo}, {hi}]", False)
             for s, z, lo, hi in [(0.1, 0, -8, 7), (0.25, 5, 0, 15), (0.02, 128, 0, 255), (1.0, 0, -1, 1)]]
    cases += [((halves, 0.5, 0, -8, 7), f"x={halves.tolist()}, scale=0.5 (exact halves)", True),
              ((halves / 2, 0.25, 5, 0, 15), f"x={(halves / 2).tolist()}, scale=0.25, zero_point=5 (exact halves)", True)]
    return cases


@exercise("linear quantize", linear_quantize_solution,
          hint="divide by the scale, round with torch.round (halves go to the even integer), add the zero point, "
               "then clamp to [q_min, q_max]")
def check_linear_quantize(c, fn) -> None:
    """Exercise 1: ``fn(x, scale, zero_point, q_min, q_max)`` returns the integer codes q of tensor x."""
    for args, label, ties in _linear_quantize_cases():
        want = linear_quantize_solution(*args)  # from the pristine inputs, before the learner's code runs
        got = c.run(fn, *args)
        if got is FAILED:  # the reason is recorded: one message is enough
            break
        got = torch.as_tensor(got)
        ok = got.shape == want.shape and torch.equal(got.to(torch.int64), want.to(torch.int64))
        c.expect(ok, f"{label}: expected {want.tolist()}, got {got.tolist()}")
        if ties and not ok:
            c.fail_once(TIE_NOTE)


@exercise("asymmetric qparams", qparams_solution,
          hint="first widen [x_min, x_max] to include 0; scale = range / (2^bits - 1); "
               "zero_point = -round(x_min / scale), so that real 0 lands exactly on a code")
def check_qparams(c, fn) -> None:
    """Exercise 2: ``fn(x_min, x_max, bits)`` returns (scale, zero_point) of an asymmetric unsigned grid."""
    for args in [(-1.0, 3.0, 8), (0.0, 6.0, 4), (0.5, 2.0, 8), (-4.0, -1.0, 3), (-0.37, 1.11, 2)]:
        want_scale, want_zp = qparams_solution(*args)
        got = c.run(fn, *args)
        if got is FAILED:
            break
        try:
            scale, zero_point = got
        except (TypeError, ValueError):
            c.expect(False, f"fn{args} must return a pair (scale, zero_point), got {describe(got)}")
            continue
        c.close(scale, want_scale, f"scale of fn{args}")
        c.expect(float(zero_point) == want_zp, f"zero_point of fn{args}: expected {want_zp}, got {describe(zero_point)}")


def _requantize_cases():
    """Accumulators, multipliers and output grids; no case lies within 1% of a rounding tie."""
    from mpqlab.quant.integer import quantize_multiplier

    cases = []
    g = torch.Generator().manual_seed(1)
    accs = torch.randint(-200_000, 200_000, (40,), generator=g).tolist() + [0, 7, -7]
    for i, acc in enumerate(accs):
        multiplier = [0.00037, 0.0021, 0.0131, 0.61][i % 4]
        m0, shift = quantize_multiplier(multiplier)
        exact = Fraction(acc * m0, 2 ** (31 + shift))
        if abs(exact - math.floor(exact) - Fraction(1, 2)) < Fraction(1, 100):
            continue
        zero_point, (q_min, q_max) = [(0, (0, 255)), (128, (0, 255)), (-3, (-128, 127))][i % 3]
        cases.append((acc, m0, shift, zero_point, q_min, q_max))
    return cases


def _huge_accumulator_cases():
    """int64 accumulators above 2**53 whose exact result lies within 2**-54 of a tie k + 1/2, on either side.

    float64 holds neither such an accumulator nor acc * m0 / 2^(31 + shift) exactly: a float answer lands on
    the tie itself and so rounds the wrong way on one side of it. Integer arithmetic is exact, and no case is
    an exact tie, so every integer rounding (half up, half even, ...) passes.
    """
    shift, m0 = 54, 2**30 + 2**29 + 12345  # multiplier m0 / 2^85, about 2^-55
    cases = []
    for k, zero_point in [(37, 0), (100, 10), (-20, 0), (-61, 3), (6, -5)]:
        tie = (2 * k + 1) * 2 ** (31 + shift - 1)  # (k + 1/2) * 2^(31 + shift)
        below = tie // m0  # acc * m0 = tie - r with 0 < r < m0: m0 > |2k + 1| is odd, so it never divides tie
        for acc in (below, below + 1):
            cases.append((acc, m0, shift, zero_point, -128, 127))
    return cases


@exercise("integer requantization", requantize_solution,
          hint="the result is zero_point + round(acc * m0 / 2^(31 + shift)), clamped; rounding is "
               "(value + half the divisor) >> the shift, in Python ints only (no float, no true division /)")
def check_requantize(c, fn) -> None:
    """Exercise 3: ``fn(acc, m0, shift, zero_point, q_min, q_max)`` returns the output code as an int."""
    for args in _requantize_cases() + _huge_accumulator_cases():
        want = requantize_solution(*args)
        got = c.run(fn, *args)
        if got is FAILED:
            break
        try:
            ok = int(got) == want and float(got) == want  # an int, or a whole number of another type
        except (TypeError, ValueError, OverflowError, RuntimeError):
            ok = False
        c.expect(ok, f"fn{args}: expected {want}, got {describe(got)}")
        if not ok and abs(args[0]) > 2**53:
            c.fail_once("acc is above 2**53 there, where float64 is not exact: a float answer rounds the wrong "
                        "way next to a .5, so use integers only")
