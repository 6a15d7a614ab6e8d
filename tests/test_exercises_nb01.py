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
