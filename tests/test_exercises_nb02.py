import math

import torch

from mpqlab.exercises.nb02 import (
    best_fsr_solution, check_best_fsr, check_leading_one, check_log_quant, leading_one_solution, log_quant_solution,
)


def not_implemented(*args):
    raise NotImplementedError


def test_reference_solutions_pass(capsys):
    assert check_log_quant(log_quant_solution)
    assert check_leading_one(leading_one_solution)
    assert check_best_fsr(best_fsr_solution)
    assert capsys.readouterr().out.count("PASS") == 3


def test_stubs_fail_without_raising(capsys):
    assert not check_log_quant(not_implemented)
    assert not check_leading_one(not_implemented)
    assert not check_best_fsr(not_implemented)
    out = capsys.readouterr().out
    assert out.count("FAIL") == 3 and "NotImplementedError" in out


def test_wrong_answers_fail():
    # forgets that exponents at the low end of the range become 0
    no_zero = lambda x, bits, fsr: torch.where(  # noqa: E731
        x > 0, 2.0 ** torch.round(torch.log2(x.clamp(min=1e-30))).clamp(max=fsr - 1), 0.0)
    assert not check_log_quant(no_zero)
    # rounds in the linear domain: 1.42 -> 1 instead of 2
    linear_round = lambda x, bits, fsr: log_quant_solution(  # noqa: E731
        2.0 ** torch.floor(torch.log2(x.clamp(min=1e-30) * 4 / 3)) * (x > 0), bits, fsr)
    assert not check_log_quant(linear_round)
    assert not check_leading_one(lambda n: math.floor(math.log2(n)))  # float log2 fails at 2**53 - 1
    assert not check_best_fsr(lambda w, bits, candidates: list(candidates)[-1])
