"""Paired comparisons of bit-width criteria over seeds (mpqlab.limpq.compare)."""

import pytest

from mpqlab.errors import DataFileError
from mpqlab.limpq.compare import difference_table, paired_differences, summary_table, verdicts


def pts(method, budget, accs, bitops=1e6):
    return [{"method": method, "budget_bits": budget, "seed": s, "accuracy": a, "bitops": bitops}
            for s, a in enumerate(accs)]


POINTS = (pts("limpq", 3, [0.80, 0.82, 0.81]) + pts("uniform", 3, [0.78, 0.80, 0.79])
          + pts("random", 3, [0.70, 0.90, 0.75]) + pts("float", 32, [0.90, 0.91, 0.92], None))


def test_summary_is_mean_and_sd_in_percent():
    table = summary_table(POINTS)
    assert table.loc[("limpq", 3), "mean"] == pytest.approx(81.0)
    assert table.loc[("limpq", 3), "sd"] == pytest.approx(1.0)
    assert table.loc[("limpq", 3), "seeds"] == 3


def test_paired_differences_pair_by_seed_and_float_pairs_with_every_budget():
    diffs = paired_differences(POINTS)
    uni = diffs[("uniform", 3)]
    assert uni.mean == pytest.approx(2.0) and uni.sd == pytest.approx(0.0, abs=1e-9)  # +2 points in every seed
    assert diffs[("float", 3)].mean == pytest.approx(-10.0)
    assert not diffs[("random", 3)].detectable  # random swings by 20 points between seeds
    table = difference_table(diffs)
    assert table.loc[("limpq - uniform", "W3A3"), "seeds"] == 3


def test_verdicts_are_computed_sentences():
    text = verdicts(paired_differences(POINTS, against=["uniform", "random"]))
    assert text[0].startswith("limpq beats uniform at the W3A3 budget by 2.00")
    assert "no difference we can detect" in text[1]


def test_bad_points_are_refused():
    with pytest.raises(DataFileError, match="missing"):
        summary_table([{"method": "limpq"}])
    with pytest.raises(DataFileError, match="twice"):
        summary_table(POINTS + POINTS[:1])
    with pytest.raises(DataFileError, match="no points of method 'hessian'"):
        paired_differences(POINTS, method="hessian")


def test_policy_summary_counts_differences_and_two_bit_layers():
    from mpqlab.limpq.compare import policy_summary

    def point(method, seed, policy):
        return {"method": method, "budget_bits": 3, "seed": seed, "accuracy": 0.9, "policy": policy}

    fixed = {"first": [8, 8]}
    pts = [point("limpq", 0, {"a": [2, 2], "b": [4, 3], **fixed}), point("hessian", 0, {"a": [2, 2], "b": [6, 2], **fixed}),
           point("limpq", 1, {"a": [6, 6], "b": [6, 6], **fixed}), point("random", 0, {"a": [3, 3], "b": [3, 3], **fixed}),
           {"method": "float", "budget_bits": 32, "seed": 0, "accuracy": 0.92, "policy": None}]
    table = policy_summary(pts, seed=0, layers=["a", "b"])
    assert list(table.index) == [("hessian", 3), ("limpq", 3)]  # random and float are skipped
    hessian = table.loc[("hessian", 3)]
    assert hessian["layers differing from limpq"] == 1
    assert (hessian["2-bit weights"], hessian["2-bit activations"]) == (1, 2)
    assert hessian["mean w_bits"] == 4 and hessian["mean a_bits"] == 2
    assert table.loc[("limpq", 3)]["layers differing from limpq"] == 0
    with pytest.raises(DataFileError, match="layers"):
        policy_summary(pts, seed=0, layers=["a", "zzz"])
    with pytest.raises(DataFileError, match="seed 7"):
        policy_summary(pts, seed=7, layers=["a"])
