import torch

from mpqlab.exercises.nb08 import check_and_popcount_dot, check_weight_scale, check_xnor_dot
from mpqlab.quant.binary import binarize_weight, xnor_popcount_dot


def test_reference_solutions_pass(capsys):
    for check in (check_xnor_dot, check_weight_scale, check_and_popcount_dot):
        assert check(check.solution) is True
    assert capsys.readouterr().out.count("PASS") == 3


def test_wrong_answers_and_stubs_fail(capsys):
    assert check_xnor_dot(lambda a, w: int((a == w).sum())) is False  # forgot the -1 terms
    assert check_weight_scale(lambda w: w.abs().mean().expand(w.shape[0])) is False  # one scale for all
    assert check_and_popcount_dot(check_xnor_dot.solution) is False  # treats a = 0 as -1

    def stub(*args):
        raise NotImplementedError

    assert check_and_popcount_dot(stub) is False
    assert capsys.readouterr().out.count("FAIL") == 4


def test_solutions_agree_with_the_package():
    g = torch.Generator().manual_seed(0)
    a, w = torch.randint(0, 2, (37,), generator=g), torch.randint(0, 2, (37,), generator=g)
    assert check_xnor_dot.solution(a, w) == int(xnor_popcount_dot(a, w))
    weights = torch.randn(4, 2, 3, 3, generator=g)
    alpha = check_weight_scale.solution(weights)
    assert torch.allclose(binarize_weight(weights).abs().flatten(1)[:, 0], alpha)
