"""Notebook 09 self-checks: each passes the reference solution and fails typical wrong answers."""

import torch

from mpqlab.exercises.nb09 import (
    check_count_per_level, check_normalised_degradation, check_slope, count_per_level_solution,
    normalised_degradation_solution, slope_solution,
)
from mpqlab.limpq.sensitivity import linear_fit, normalised_degradation, values_per_level


def not_done(*args):
    raise NotImplementedError


def test_count_per_level(capsys):
    assert check_count_per_level(count_per_level_solution)
    assert not check_count_per_level(not_done)

    def with_repeats(x, scale, bits):  # counts every value, not the distinct ones
        q_min, q_max = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        levels = torch.clamp(torch.round(x / scale), q_min, q_max)
        return {q: int((levels == q).sum()) for q in range(q_min, q_max + 1)}

    def no_clip(x, scale, bits):  # forgets the end levels
        levels = torch.round(torch.unique(x) / scale)
        return {int(q): int((levels == q).sum()) for q in levels.unique()}

    assert not check_count_per_level(with_repeats)
    assert not check_count_per_level(no_clip)
    assert "FAIL" in capsys.readouterr().out


def test_count_solution_matches_the_package():
    x = torch.randn(300, generator=torch.Generator().manual_seed(0)).round(decimals=1)
    assert count_per_level_solution(x, 0.4, 3) == values_per_level(x, 0.4, 3)


def test_normalised_degradation():
    assert check_normalised_degradation(normalised_degradation_solution)
    assert not check_normalised_degradation(not_done)
    assert not check_normalised_degradation(lambda ref, accs: [(ref - a) / ref for a in accs])  # relative drop
    assert not check_normalised_degradation(lambda ref, accs: [abs(ref - a) / max(abs(ref - b) for b in accs)
                                                               for a in accs])  # gains counted as losses
    assert list(normalised_degradation_solution(0.9, [0.8, 0.85])) == list(normalised_degradation(0.9, [0.8, 0.85]))


def test_slope():
    assert check_slope(slope_solution)
    assert not check_slope(not_done)
    assert not check_slope(lambda x, y: (y[-1] - y[0]) / (x[-1] - x[0]))  # two end points only
    assert abs(slope_solution([0.1, 0.3, 0.2], [1.0, 0.0, 2.0]) - linear_fit([0.1, 0.3, 0.2], [1.0, 0.0, 2.0])[0]) < 1e-12


def test_in_place_answers_are_judged_on_pristine_inputs():
    def count_in_place(x, scale, bits):  # right: divides x in place
        q_min, q_max = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        levels = torch.unique(x.div_(scale)).round().clamp(q_min, q_max)
        return {q: int((levels == q).sum()) for q in range(q_min, q_max + 1)}

    assert check_count_per_level(count_in_place)  # used to FAIL: the next case saw the divided x

    def overwrites_accs(acc_ref, accs):  # right: reuses the list it was given
        for i, a in enumerate(accs):
            accs[i] = acc_ref - a
        worst = max(accs)
        return [d / worst for d in accs]

    assert check_normalised_degradation(overwrites_accs)
