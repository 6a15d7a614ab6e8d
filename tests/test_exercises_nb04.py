import math

import torch

from mpqlab.widgets.outlier import outlier_grid

from mpqlab.exercises.nb04 import (
    check_fewest_outliers, fewest_outliers_solution, check_compressed_bytes, check_threshold, compressed_bytes_solution,
    threshold_solution,
)


def not_implemented(*args):
    raise NotImplementedError


def test_reference_solutions_pass(capsys):
    assert check_threshold(threshold_solution)
    assert check_compressed_bytes(compressed_bytes_solution)
    assert check_fewest_outliers(fewest_outliers_solution)
    assert capsys.readouterr().out.count("PASS") == 3


def test_stubs_fail_without_raising(capsys):
    assert not check_threshold(not_implemented)
    assert not check_compressed_bytes(not_implemented)
    assert not check_fewest_outliers(not_implemented)
    out = capsys.readouterr().out
    assert out.count("FAIL") == 3 and "NotImplementedError" in out


def test_wrong_answers_fail():
    # a quantile over all values, zeros included: too low for post-ReLU tensors
    with_zeros = lambda x, ratio: float(torch.quantile(x.abs().flatten(), 1 - ratio))  # noqa: E731
    assert not check_threshold(with_zeros)
    # off by one in the order statistic
    off_by_one = lambda x, ratio: float(  # noqa: E731
        torch.sort(x.abs().flatten()[x.abs().flatten() > 0]).values[
            max(0, (x != 0).sum() - math.floor(ratio * (x != 0).sum()) - 2)])
    assert not check_threshold(off_by_one)
    assert not check_compressed_bytes(lambda numel, n_out, bits: numel * bits / 8 + 8 * n_out + 4)  # no rounding up
    assert not check_compressed_bytes(lambda numel, n_out, bits: math.ceil(numel * bits / 8) + 4 * n_out + 4)
    assert not check_fewest_outliers(lambda x, bits, ratios, target: max(ratios))
    # tries the ratios in the given order, not from the smallest
    in_order = lambda x, bits, ratios, target: next(  # noqa: E731
        (r for r in ratios if outlier_grid(x, bits, r).mse <= target), None)
    assert not check_fewest_outliers(in_order)


def test_fewest_outliers_accepts_none_only_where_it_is_right(capsys):
    assert check_fewest_outliers(fewest_outliers_solution)  # returns None for the unreachable targets
    assert not check_fewest_outliers(lambda x, bits, ratios, target: None)
    assert "did you forget `return`?" in capsys.readouterr().out


def test_compressed_bytes_check_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_compressed_bytes(compressed_bytes_solution)
    assert torch.equal(torch.rand(3), expected)  # the check used to reseed it with torch.manual_seed(0)
