"""Exercises of notebook 04 (outlier-aware quantization): the threshold, the bytes of a compressed
activation, and the fewest outliers that bring the error down to a target."""

from __future__ import annotations

import math

import torch

from mpqlab.exercises import FAILED, RETURNED_NONE, describe, exercise
from mpqlab.quant.outlier import compress_for_backward, outlier_threshold
from mpqlab.widgets.outlier import outlier_grid


def threshold_solution(x, ratio):
    # the (1 - ratio) quantile of the non-zero magnitudes, as an order statistic
    mag = x.abs().flatten()
    mag = mag[mag > 0]
    keep = mag.numel() - math.floor(ratio * mag.numel())  # t is the keep-th smallest
    return float(torch.sort(mag).values[keep - 1])


def compressed_bytes_solution(numel, n_outliers, bits):
    # packed b-bit codes for every value + (int32 position, float32 value) per outlier + one float32 scale
    return math.ceil(numel * bits / 8) + n_outliers * (4 + 4) + 4


def fewest_outliers_solution(x, bits, ratios, target_mse):
    # ratios are tried from the smallest: outliers cost memory and a slow path, so use as few as will do
    for r in sorted(ratios):
        if outlier_grid(x, bits, r).mse <= target_mse:
            return r
    return None


def _tensors():
    g = torch.Generator().manual_seed(4)
    heavy = torch.distributions.StudentT(2.0).sample((3000,))  # heavy tails: a few large values
    return [torch.randn(1000, generator=g),
            torch.randn(40, 50, generator=g).relu(),  # half zeros, like a post-ReLU activation
            heavy * (torch.rand(3000, generator=g) > 0.3)]


@exercise("outlier threshold", threshold_solution,
          hint="count only the non-zero magnitudes; t is the (n - floor(ratio n))-th smallest of them")
def check_threshold(c, fn) -> None:
    """Exercise 1: ``fn(x, ratio)`` returns the outlier threshold t of a signed tensor."""
    for x in _tensors():
        for ratio in (0.0, 0.01, 0.03, 0.5):
            want = outlier_threshold(x, ratio)
            got = c.run(fn, x, ratio)
            if got is FAILED:  # the reason is recorded: one message is enough
                return
            c.close(got, want, f"fn(x of {x.numel()} values, ratio={ratio})", rel=1e-6)


@exercise("bytes of a compressed activation", compressed_bytes_solution,
          hint="codes take numel * bits / 8 bytes rounded up; each outlier needs its position and its value")
def check_compressed_bytes(c, fn) -> None:
    """Exercise 2: ``fn(numel, n_outliers, bits)`` returns the bytes ``compress_for_backward`` holds."""
    g = torch.Generator().manual_seed(0)  # a private generator: the notebook's global RNG is left alone
    for shape, bits, ratio in [((8, 16, 8, 8), 3, 0.02), ((4, 1000), 4, 0.0), ((1001,), 2, 0.1), ((64, 9), 8, 0.03)]:
        x = torch.randn(shape, generator=g).relu()
        packed = compress_for_backward(x, bits, ratio)
        n_out = packed.outlier_index.numel()
        got = c.run(fn, x.numel(), n_out, bits)
        if got is FAILED:
            break
        c.close(got, packed.nbytes, f"fn({x.numel()}, {n_out}, {bits})")


@exercise("the fewest outliers that reach a target error", fewest_outliers_solution,
          hint="outlier_grid(x, bits, ratio).mse is the error of one ratio; try the ratios in increasing "
               "order and return None when even the largest misses the target")
def check_fewest_outliers(c, fn) -> None:
    """Exercise 3: ``fn(x, bits, ratios, target_mse)`` returns the smallest ratio in ``ratios`` whose MSE is
    at most ``target_mse`` (None if none is)."""
    ratios = [0.03, 0.0, 0.001, 0.005, 0.01, 0.02]  # not sorted, on purpose
    for x in _tensors():
        for bits in (2, 3, 4):
            linear = outlier_grid(x, bits, 0.0).mse
            for t in (linear / 1.5, linear / 3, linear / 10):  # cut the linear error by 1.5x, 3x, 10x
                want = fewest_outliers_solution(x, bits, ratios, t)
                got = c.run(fn, x, bits, ratios, t, may_return_none=True)  # None is right when no ratio will do
                if got is FAILED:
                    return
                if got is None and want is not None:
                    c.fail_once(f"{RETURNED_NONE} (None is right only when no ratio reaches the target)")
                    continue
                c.expect(got == want, f"fn(x of {x.numel()} values, bits={bits}, ratios, {t:.2e}): "
                                      f"expected {want}, got {describe(got)}")
