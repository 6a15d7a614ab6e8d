"""Paired comparisons across seeds: Student's t quantile, mean intervals, paired differences, verdicts."""

import math

import numpy as np
import pytest

from mpqlab.errors import TensorValueError
from mpqlab.stats import Interval, mean_interval, paired_difference, t_cdf, t_quantile, verdict


@pytest.mark.parametrize("df, expected", [(1, 12.706), (2, 4.303), (4, 2.776), (30, 2.042)])
def test_t_quantile_matches_the_printed_table(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-3)


def test_t_cdf_is_symmetric_and_inverts_the_quantile():
    assert t_cdf(0.0, 5) == pytest.approx(0.5)
    assert t_cdf(-1.3, 5) == pytest.approx(1 - t_cdf(1.3, 5), abs=1e-12)
    assert t_cdf(t_quantile(0.9, 7), 7) == pytest.approx(0.9, abs=1e-9)
    assert t_cdf(1.0, 1) == pytest.approx(0.75, abs=1e-8)  # Cauchy: 1/2 + atan(1)/pi


@pytest.mark.parametrize("p, df", [(0.4, 3), (1.0, 3), (0.975, 0)])
def test_t_quantile_refuses_bad_arguments(p, df):
    with pytest.raises(TensorValueError):
        t_quantile(p, df)


def test_mean_interval_is_mean_plus_minus_t_sd_over_root_n():
    values = [1.0, 2.0, 4.0, 7.0, 11.0]
    got = mean_interval(values)
    sd = float(np.std(values, ddof=1))
    half = 2.776 * sd / math.sqrt(5)
    assert got.n == 5 and got.mean == pytest.approx(5.0) and got.sd == pytest.approx(sd)
    assert got.low == pytest.approx(5.0 - half, abs=1e-3) and got.high == pytest.approx(5.0 + half, abs=1e-3)


def test_paired_difference_is_the_interval_of_the_differences():
    a, b = [70.1, 71.0, 69.5, 70.8], [69.0, 70.2, 69.1, 69.5]
    got = paired_difference(a, b)
    want = mean_interval(np.subtract(a, b))
    assert (got.mean, got.low, got.high, got.n) == pytest.approx((want.mean, want.low, want.high, want.n))


@pytest.mark.parametrize("a, b", [
    ([1.0, 2.0, 3.0], [1.0, 2.0]),  # not paired: different counts
    ([1.0], [0.5]),  # a single pair has no spread
    ([1.0, float("nan"), 3.0], [0.0, 1.0, 2.0]),  # a failed run
    ([1.0, 2.0, 3.0], [0.0, float("inf"), 2.0]),
])
def test_paired_difference_refuses_what_has_no_interval(a, b):
    with pytest.raises(TensorValueError):
        paired_difference(a, b)


def test_detectable_means_the_interval_excludes_zero():
    assert Interval(1.0, 0.5, 0.2, 1.8, 5).detectable
    assert Interval(-1.0, 0.5, -1.8, -0.2, 5).detectable
    assert not Interval(0.3, 0.5, -0.1, 0.7, 5).detectable


def test_verdict_names_the_leader_when_the_difference_is_detectable():
    ahead = paired_difference([71.0, 72.0, 71.5, 72.2], [70.0, 70.8, 70.6, 71.0])
    assert ahead.detectable and ahead.mean > 0
    text = verdict("limpq", "uniform", ahead, where="at W3A3")
    assert text.startswith("limpq beats uniform at W3A3 by ") and "4 paired seeds" in text
    assert f"{ahead.mean:.2f}" in text and "no difference" not in text
    behind = paired_difference([70.0, 70.8, 70.6, 71.0], [71.0, 72.0, 71.5, 72.2])
    assert verdict("limpq", "uniform", behind).startswith("uniform beats limpq by ")


def test_verdict_says_no_detectable_difference_otherwise():
    diff = paired_difference([70.0, 71.0, 69.0], [70.5, 70.0, 69.6])
    assert not diff.detectable
    text = verdict("hessian", "random", diff)
    assert text.startswith("hessian vs random: no difference we can detect")
    assert "beats" not in text and "3 paired seeds" in text


def test_verdict_words_a_loss_and_what_was_paired():
    more = paired_difference([3.0, 2.5, 3.2, 2.8], [1.0, 1.2, 0.9, 1.1])  # points lost, a minus b
    text = verdict("depthwise", "pointwise", more, where="from 4 to 2 bits", verb="loses more than",
                   paired="paired (pair, seed) runs")
    assert text.startswith("depthwise loses more than pointwise from 4 to 2 bits by ")
    assert "4 paired (pair, seed) runs" in text and "beats" not in text
    less = paired_difference([1.0, 1.2, 0.9, 1.1], [3.0, 2.5, 3.2, 2.8])
    assert verdict("depthwise", "pointwise", less, verb="loses more than").startswith("pointwise loses more than depthwise")
    noise = paired_difference([1.0, 2.0, 0.5], [1.2, 1.1, 1.0])
    assert "3 paired (pair, seed) runs)" in verdict("depthwise", "pointwise", noise, paired="paired (pair, seed) runs")


def test_rank_correlation_orders_and_ties():
    from mpqlab.stats import rank_correlation

    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # monotone but not linear: still 1
    assert rank_correlation([1, 2, 3, 4], [1, 8, 27, 1000]) == pytest.approx(1.0)
    # ties share their mean rank: ranks (1, 2.5, 2.5, 4) vs (1, 2, 3, 4)
    expected = np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1]
    assert rank_correlation([0, 5, 5, 9], [1, 2, 3, 4]) == pytest.approx(expected)
    assert rank_correlation([5, 9, 0, 5], [2, 4, 1, 3]) == pytest.approx(expected)  # same pairs, shuffled
    with pytest.raises(TensorValueError):
        rank_correlation([1, 1, 1], [1, 2, 3])
    with pytest.raises(TensorValueError):
        rank_correlation([1, 2], [1, 2, 3])


def test_intervals_work_for_many_pairs():
    # Student's t tends to the normal: t_0.975 with 999 degrees of freedom is 1.9623
    assert t_quantile(0.975, 999) == pytest.approx(1.9623, abs=1e-3)
    d = paired_difference(np.arange(1000) % 3 + 1.0, np.zeros(1000))
    assert d.n == 1000 and d.low < 2 < d.high


def test_seed_values_pairs_by_seed_and_refuses_gaps():
    from mpqlab.errors import DataFileError
    from mpqlab.stats import seed_values

    rows = [{"seed": 1, "method": "a", "accuracy": 0.8}, {"seed": 0, "method": "a", "accuracy": 0.7},
            {"seed": 0, "method": "b", "accuracy": 0.6}, {"seed": 1, "method": "b", "error": "QuantParamError: s"}]
    assert seed_values(rows, "accuracy", [0, 1], method="a") == [0.7, 0.8]  # the order asked for, not the file's
    assert seed_values(rows, lambda r: 2 * r["accuracy"], [0], method="b") == [1.2]
    with pytest.raises(DataFileError, match=r"seed\(s\) \[1\].*QuantParamError"):  # a run that failed
        seed_values(rows, "accuracy", [0, 1], method="b")
    with pytest.raises(DataFileError, match=r"seed\(s\) \[2\].*no 'accuracy'"):  # a run that never ran
        seed_values(rows, "accuracy", [0, 2], method="a")
