import torch

from mpqlab.exercises.nb03 import (
    _clusters, best_threshold_solution, check_best_threshold, check_representatives, check_weighted_entropy,
    representatives_solution, weighted_entropy_solution,
)


def not_implemented(*args):
    raise NotImplementedError


def test_reference_solutions_pass(capsys):
    assert check_representatives(representatives_solution)
    assert check_weighted_entropy(weighted_entropy_solution)
    assert check_best_threshold(best_threshold_solution)
    assert capsys.readouterr().out.count("PASS") == 3


def test_stubs_fail_without_raising(capsys):
    assert not check_representatives(not_implemented)
    assert not check_weighted_entropy(not_implemented)
    assert not check_best_threshold(not_implemented)
    assert capsys.readouterr().out.count("FAIL") == 3


def test_wrong_answers_fail():
    mean_abs = lambda w, t: torch.stack(  # noqa: E731  (mean |w| instead of the RMS)
        [w[_clusters(w, t) == j].abs().mean() for j in range(len(t) + 1)])
    assert not check_representatives(mean_abs)
    plain_entropy = lambda w, t: weighted_entropy_solution(w.sign(), t)  # noqa: E731  (every I_k = 1)
    assert not check_weighted_entropy(plain_entropy)
    assert not check_best_threshold(lambda w: float(w.abs().median()))  # equal population, not weighted


def test_best_threshold_without_return_says_so(capsys):
    def forgot_return(w):
        best = float(w.abs().median())  # noqa: F841  (computed, never returned)

    assert not check_best_threshold(forgot_return)  # used to raise TypeError from float(None)
    assert "did you forget `return`?" in capsys.readouterr().out


def test_representatives_in_place_answer_passes():
    def in_place(w, thresholds):  # squares w in place, then averages: right
        k = _clusters(w, thresholds)
        w.pow_(2)
        return torch.stack([w[k == j].mean().sqrt() for j in range(len(thresholds) + 1)])

    assert check_representatives(in_place)
