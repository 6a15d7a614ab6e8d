import torch
from torch import nn

from mpqlab.exercises.nb07 import (check_fold_bias, check_gaussian_kl, check_pick_frozen, fold_bias_solution,
                                   gaussian_kl_solution, pick_frozen_solution)
from mpqlab.profit import gaussian_kl, layers_to_freeze
from mpqlab.quant.hswish_shift import fold_shift


def test_reference_solutions_pass(capsys):
    for check in (check_fold_bias, check_gaussian_kl, check_pick_frozen):
        assert check(check.solution) is True
    assert capsys.readouterr().out.count("PASS") == 3


def test_wrong_answers_and_stubs_fail(capsys):
    assert check_fold_bias(lambda w, b, d: b + d * w.sum(dim=(1, 2, 3))) is False  # wrong sign
    assert check_gaussian_kl(lambda mp, vp, mq, vq: 0.5 * (torch.log(vq / vp) + (vp + (mp - mq) ** 2) / vq)) is False
    assert check_pick_frozen(lambda s, f, x: sorted(s, key=lambda n: -s[n])[:round(x * len(s))]) is False  # refreezes

    def stub(*args):
        raise NotImplementedError

    assert check_gaussian_kl(stub) is False
    out = capsys.readouterr().out
    assert out.count("FAIL") == 4 and "NotImplementedError" in out


def test_solutions_agree_with_the_package():
    conv = nn.Conv2d(3, 3, 3, padding=1, groups=3)
    assert torch.allclose(fold_bias_solution(conv.weight.detach(), conv.bias.detach(), 0.375), fold_shift(conv).bias)
    args = (torch.tensor([0.5]), torch.tensor([2.0]), torch.tensor([-0.5]), torch.tensor([0.3]))
    assert torch.allclose(gaussian_kl_solution(*args), gaussian_kl(*args))
    scores = {"a": 3.0, "b": 1.0, "c": 2.0}
    assert pick_frozen_solution(scores, ["a"], 2 / 3) == layers_to_freeze(scores, ["a"], 2 / 3) == ["c"]
