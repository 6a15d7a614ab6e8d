"""Exercises of notebook 01 (uniform quantization): quantize, choose (scale, zero_point), requantize with integers."""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from mpqlab.exercises import FAILED, Check, with_solution


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


@with_solution(linear_quantize_solution)
def check_linear_quantize(fn) -> bool:
    """Exercise 1: ``fn(x, scale, zero_point, q_min, q_max)`` returns the integer codes q of tensor x."""
    c = Check("linear quantize")
    x = torch.tensor([-1.3, -0.26, 0.0, 0.1, 0.24, 0.9, 2.6])
    for args in [(x, 0.1, 0, -8, 7), (x, 0.25, 5, 0, 15), (x, 0.02, 128, 0, 255), (x, 1.0, 0, -1, 1)]:
        got = c.run(fn, *args)
        if got is FAILED:  # it raised: one message is enough
            break
        want = linear_quantize_solution(*args)
        try:
            ok = got is not None and torch.equal(torch.as_tensor(got).to(torch.int64), want.to(torch.int64))
        except (TypeError, RuntimeError):
            ok = False
        c.expect(ok, f"scale={args[1]}, zero_point={args[2]}, range [{args[3]}, {args[4]}]: expected "
                     f"{want.tolist()}, got {got.tolist() if isinstance(got, torch.Tensor) else got!r}")
    return c.verdict("divide by the scale, round, add the zero point, then clamp to [q_min, q_max]")


@with_solution(qparams_solution)
def check_qparams(fn) -> bool:
    """Exercise 2: ``fn(x_min, x_max, bits)`` returns (scale, zero_point) of an asymmetric unsigned grid."""
    c = Check("asymmetric qparams")
    for args in [(-1.0, 3.0, 8), (0.0, 6.0, 4), (0.5, 2.0, 8), (-4.0, -1.0, 3), (-0.37, 1.11, 2)]:
        got = c.run(fn, *args)
        if got is FAILED:  # it raised: one message is enough
            break
        try:
            scale, zero_point = got
        except (TypeError, ValueError):
            c.expect(False, f"fn{args} must return a pair (scale, zero_point), got {got!r}")
            continue
        want_scale, want_zp = qparams_solution(*args)
        c.close(scale, want_scale, f"scale of fn{args}")
        c.expect(float(zero_point) == want_zp, f"zero_point of fn{args}: expected {want_zp}, got {zero_point!r}")
    return c.verdict("first widen [x_min, x_max] to include 0; scale = range / (2^bits - 1); "
                     "zero_point = -round(x_min / scale), so that real 0 lands exactly on a code")


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


@with_solution(requantize_solution)
def check_requantize(fn) -> bool:
    """Exercise 3: ``fn(acc, m0, shift, zero_point, q_min, q_max)`` returns the output code as an int."""
    c = Check("integer requantization")
    for args in _requantize_cases():
        got = c.run(fn, *args)
        if got is FAILED:  # it raised: one message is enough
            break
        want = requantize_solution(*args)
        try:
            ok = int(got) == want and float(got) == want  # an int, or a whole number of another type
        except (TypeError, ValueError, RuntimeError):
            ok = False
        c.expect(ok, f"fn{args}: expected {want}, got {got!r}")
    return c.verdict("the result is zero_point + round(acc * m0 / 2^(31 + shift)), clamped; rounding is "
                     "(value + half the divisor) >> the shift")
