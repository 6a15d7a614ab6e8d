"""Notebook 01 self-checks: each passes the reference solution and fails typical wrong answers."""

import torch

from mpqlab.exercises.nb01 import (
    check_linear_quantize, check_qparams, check_requantize, linear_quantize_solution, qparams_solution,
    requantize_solution,
)
from mpqlab.quant.integer import QParams, quantize_multiplier, requantize
from mpqlab.quant.uniform import qparams_from_range, quantize


def not_done(*args):
    raise NotImplementedError


def test_linear_quantize(capsys):
    assert check_linear_quantize(linear_quantize_solution)
    assert not check_linear_quantize(not_done)
    assert not check_linear_quantize(lambda x, s, z, lo, hi: (torch.floor(x / s) + z).clamp(lo, hi))  # floor
    assert not check_linear_quantize(lambda x, s, z, lo, hi: torch.round(x / s) + z)  # no clamp
    assert "FAIL" in capsys.readouterr().out


def test_linear_quantize_solution_matches_the_package():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(linear_quantize_solution(x, 0.05, 3, -8, 7), quantize(x, 0.05, 3, -8, 7))


def test_qparams():
    assert check_qparams(qparams_solution)
    assert not check_qparams(not_done)

    def no_widening(x_min, x_max, bits):  # forgets that 0 must be inside the range
        scale = (x_max - x_min) / (2**bits - 1)
        return scale, -round(x_min / scale)

    def float_zero_point(x_min, x_max, bits):  # zero point not rounded: 0 is not on the grid
        x_min, x_max = min(x_min, 0.0), max(x_max, 0.0)
        scale = (x_max - x_min) / (2**bits - 1)
        return scale, -x_min / scale

    assert not check_qparams(no_widening)
    assert not check_qparams(float_zero_point)
    assert not check_qparams(lambda x_min, x_max, bits: 1.0)  # not a pair


def test_qparams_solution_matches_the_package():
    for x_min, x_max, bits in [(-1.0, 3.0, 8), (0.5, 2.0, 8), (-4.0, -1.0, 3), (-0.37, 1.11, 2)]:
        scale, zero_point = qparams_solution(x_min, x_max, bits)
        ref_scale, ref_zp = qparams_from_range(x_min, x_max, bits)
        assert abs(scale - ref_scale.item()) <= 1e-6 * scale and zero_point == ref_zp.item()


def test_requantize():
    assert check_requantize(requantize_solution)
    assert not check_requantize(not_done)
    truncating = lambda acc, m0, sh, z, lo, hi: min(max(z + ((acc * m0) >> (31 + sh)), lo), hi)  # noqa: E731
    no_zero_point = lambda acc, m0, sh, z, lo, hi: min(max(requantize_solution(acc, m0, sh, 0, -999, 999), lo), hi)  # noqa: E731
    no_clamp = lambda acc, m0, sh, z, lo, hi: requantize_solution(acc, m0, sh, z, -10**9, 10**9)  # noqa: E731
    assert not check_requantize(truncating)
    assert not check_requantize(no_zero_point)
    assert not check_requantize(no_clamp)


def test_requantize_solution_matches_the_package():
    acc = torch.randint(-200_000, 200_000, (300,), generator=torch.Generator().manual_seed(2))
    for multiplier in (0.00037, 0.0131, 0.61):
        m0, shift = quantize_multiplier(multiplier)
        out = QParams(scale=1.0, zero_point=128, q_min=0, q_max=255)
        ref = requantize(acc[:, None], torch.tensor([multiplier], dtype=torch.float64), out).flatten().tolist()
        ours = [requantize_solution(a, m0, shift, 128, 0, 255) for a in acc.tolist()]
        # gemmlowp rounds twice (high multiply, then shift); ours rounds once: at most one step apart
        assert max(abs(a - b) for a, b in zip(ref, ours)) <= 1
        assert sum(a != b for a, b in zip(ref, ours)) <= 3


def test_linear_quantize_in_place_answers_are_judged_on_pristine_inputs():
    # right, but works in place on x: it used to FAIL (the reference then saw the changed x)
    assert check_linear_quantize(lambda x, s, z, lo, hi: x.div_(s).round_().add_(z).clamp_(lo, hi))
    # wrong (every code is the zero point), but it zeroed x first: it used to PASS
    assert not check_linear_quantize(lambda x, s, z, lo, hi: (x.zero_() + z).clamp(lo, hi))


def test_linear_quantize_demands_the_package_rounding_of_halves(capsys):
    half_up = lambda x, s, z, lo, hi: (torch.floor(x / s + 0.5) + z).clamp(lo, hi)  # noqa: E731
    away_from_zero = lambda x, s, z, lo, hi: (torch.sign(x / s) * torch.floor((x / s).abs() + 0.5) + z).clamp(lo, hi)  # noqa: E731
    capsys.readouterr()
    assert not check_linear_quantize(half_up)
    out = capsys.readouterr().out
    assert "exact halves" in out and "torch.round" in out and "even" in out
    assert not check_linear_quantize(away_from_zero)
    assert check_linear_quantize(lambda x, s, z, lo, hi: (torch.round(x / s) + z).clamp(lo, hi).int())


def test_linear_quantize_ties_are_ties_in_the_package():
    halves = torch.tensor([1.25, -1.25, 0.75, -0.75, 0.25, -0.25, 1.75])
    assert torch.equal(quantize(halves, 0.5, 0, -8, 7), linear_quantize_solution(halves, 0.5, 0, -8, 7))
    assert quantize(halves, 0.5, 0, -8, 7).tolist() == [2, -2, 2, -2, 0, 0, 4]  # half to even


def test_qparams_without_return_says_so(capsys):
    def forgot_return(x_min, x_max, bits):
        scale = (x_max - x_min) / (2**bits - 1)  # noqa: F841  (computed, never returned)

    assert not check_qparams(forgot_return)
    assert "your function returned None: did you forget `return`?" in capsys.readouterr().out


def _float_requantizers():
    import math

    import numpy as np

    def divisor(shift):
        return 2 ** (31 + shift)

    return {
        "round(acc * m0 / 2**k)": lambda acc, m0, sh, z, lo, hi: min(max(z + round(acc * m0 / divisor(sh)), lo), hi),
        "floor(x + 0.5)": lambda acc, m0, sh, z, lo, hi: min(max(z + math.floor(acc * m0 / divisor(sh) + 0.5), lo), hi),
        "acc * float M": lambda acc, m0, sh, z, lo, hi: min(max(z + round(acc * (m0 / divisor(sh))), lo), hi),
        "numpy float64": lambda acc, m0, sh, z, lo, hi: int(np.clip(z + np.round(np.float64(acc) * m0 / divisor(sh)),
                                                                    lo, hi)),
    }


def test_requantize_fails_float_answers_on_huge_accumulators(capsys):
    for name, float_answer in _float_requantizers().items():
        assert not check_requantize(float_answer), name  # each used to PASS
    assert "above 2**53" in capsys.readouterr().out


def test_requantize_passes_every_exact_integer_rounding():
    def half_even(acc, m0, shift, zero_point, q_min, q_max):
        q, r = divmod(acc * m0, 2 ** (31 + shift))
        half = 2 ** (30 + shift)
        if r > half or (r == half and q % 2 == 1):
            q += 1
        return min(max(zero_point + q, q_min), q_max)

    def half_away_from_zero(acc, m0, shift, zero_point, q_min, q_max):
        p, d = acc * m0, 2 ** (31 + shift)
        q = (abs(p) + d // 2) // d
        return min(max(zero_point + (q if p >= 0 else -q), q_min), q_max)

    assert check_requantize(half_even)
    assert check_requantize(half_away_from_zero)
