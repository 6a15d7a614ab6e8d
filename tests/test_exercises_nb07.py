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


def test_pick_frozen_fails_global_top_k_minus_the_frozen(capsys):
    def top_k_minus_frozen(scores, frozen, fraction):  # right only when the frozen layers are the top scores
        top = sorted(scores, key=lambda n: -scores[n])[:round(fraction * len(scores))]
        return [n for n in top if n not in frozen]

    assert not check_pick_frozen(top_k_minus_frozen)  # used to PASS
    assert "frozen=['pw1']" in capsys.readouterr().out


def test_pick_frozen_without_return_says_so(capsys):
    def forgot_return(scores, frozen, fraction):
        ranked = sorted(scores, key=lambda n: -scores[n])  # noqa: F841  (computed, never returned)

    assert not check_pick_frozen(forgot_return)  # used to raise TypeError from list(None)
    assert "did you forget `return`?" in capsys.readouterr().out


def test_in_place_answers_are_judged_on_pristine_inputs():
    assert check_fold_bias(lambda w, b, d: b.sub_(d * w.sum(dim=(1, 2, 3))))  # right, in place: used to FAIL

    def zero_everything(w, b, d):  # wrong, but the reference then saw zeros too: used to PASS
        w.zero_()
        return b.zero_()

    assert not check_fold_bias(zero_everything)

    def records_the_new_ones(scores, frozen, fraction):  # right, and appends its picks to `frozen`
        ranked = sorted((n for n in scores if n not in frozen), key=lambda n: -scores[n])
        picked = ranked[:max(round(fraction * len(scores)) - len(frozen), 0)]
        frozen.extend(picked)
        return picked

    assert check_pick_frozen(records_the_new_ones)
