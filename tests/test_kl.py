"""KL (entropy) calibration against a literal, loop-by-loop reading of TensorRT's algorithm."""

import math

import numpy as np
import pytest
import torch

from mpqlab.errors import QuantParamError, TensorValueError
from mpqlab.quant.kl import KLObserver, kl_calibration, kl_curve, kl_from_histogram


def kl_brute_force(hist, i, num_levels, eps):
    """Migacz 2017 (plus the smoothing of Q), step by step with plain Python lists: no vectorisation to get wrong."""
    hist = [float(h) for h in hist]
    p = hist[:i]
    p[i - 1] += sum(hist[i:])
    q = [0.0] * i
    for level in range(num_levels):
        members = [k for k in range(i) if k * num_levels // i == level]
        mass = sum(hist[k] for k in members)
        nonzero = [k for k in members if p[k] > 0]
        for k in nonzero:
            q[k] = mass / len(nonzero)
    support = [k for k in range(i) if p[k] > 0]
    sp, sq = sum(p), sum(q)
    total = 0.0
    for k in support:
        q_k = (1 - eps) * (q[k] / sq if sq > 0 else 0.0) + eps / len(support)
        total += math.inf if q_k == 0 else p[k] / sp * math.log((p[k] / sp) / q_k)
    return total


def test_matches_brute_force_on_random_histograms():
    rng = np.random.default_rng(0)
    for _ in range(5):
        hist = rng.integers(0, 20, size=64) * (rng.random(64) > 0.3)  # with empty bins
        for eps in (0.0, 1e-4):
            candidates, kl = kl_curve(hist, 8, eps)
            assert candidates.tolist() == list(range(8, 65))
            for i, ours in zip(candidates, kl):
                assert ours == pytest.approx(kl_brute_force(hist, i, 8, eps), rel=1e-9, abs=1e-12)


def test_no_loss_when_every_bin_is_its_own_level():
    hist = np.arange(1, 17, dtype=float)
    assert kl_curve(hist, 16, eps=0.0)[1][0] == pytest.approx(0.0, abs=1e-12)


def test_small_example_by_hand():
    # P = [1, 3] merged into one level -> Q = [2, 2]: KL = 1/4 log(1/2) + 3/4 log(3/2).
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    candidates, kl = kl_curve(np.array([1.0, 3.0]), num_levels=1, eps=0.0)
    assert candidates.tolist() == [1, 2]
    assert kl[1] == pytest.approx(expected)
    assert kl[0] == pytest.approx(0.0, abs=1e-12)  # i = 1: everything clipped into one bin, Q = P


def test_missing_mass_is_infinite_unless_smoothed():
    # The last group [bin 2, bin 3] is empty, yet the outliers (bin 4) land on bin 3 of P.
    hist = np.array([5.0, 5.0, 0.0, 0.0, 1.0])
    assert kl_curve(hist, 2, eps=0.0)[1][2] == math.inf  # candidate i = 4
    smoothed = kl_curve(hist, 2, eps=1e-4)[1][2]
    assert 0 < smoothed < math.inf


def test_curve_shapes_and_threshold_is_a_candidate():
    result = kl_from_histogram(np.ones(256), bin_width=0.5, num_levels=32)
    assert result.thresholds.shape == result.kl.shape == (256 - 32 + 1,)
    assert result.bin_edges.shape == (257,) and result.bin_edges[-1] == 128.0
    assert result.threshold in result.thresholds
    assert result.threshold == pytest.approx(128.0)  # a uniform histogram loses least when nothing is clipped


def test_gaussian_threshold_clips_tails_but_not_the_bulk():
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    result = kl_calibration(x, num_levels=128)
    assert 2.5 < result.threshold < x.abs().max().item()
    low_bits = kl_calibration(x, num_levels=8)  # 4-bit: coarser grid, so clipping more pays off
    assert low_bits.threshold < result.threshold


def test_outlier_is_clipped():
    x = torch.randn(50_000, generator=torch.Generator().manual_seed(1))
    x[0] = 100.0
    assert kl_calibration(x).threshold < 10.0


def test_observer_range_and_levels():
    x = torch.relu(torch.randn(20_000, generator=torch.Generator().manual_seed(2)))
    ob = KLObserver(8)
    ob(x)
    scale, zero_point = ob.compute_qparams()
    threshold = kl_calibration(x, 256, max_abs=x.max().item()).threshold  # unsigned grid, x >= 0: all 2^8 levels
    assert zero_point.item() == 0 and scale.item() == pytest.approx(threshold / 255, rel=1e-6)
    ob4 = KLObserver(4)
    ob4(x)
    threshold4 = kl_calibration(x, 16, max_abs=x.max().item()).threshold  # 2^4 = 16 levels in [0, T]
    assert ob4.compute_qparams()[0].item() == pytest.approx(threshold4 / 15, rel=1e-6)
    signed = KLObserver(4, symmetric=True, signed=True)
    signed(x)
    threshold_signed = kl_calibration(x, 8, max_abs=x.max().item()).threshold  # 2^(4-1) = 8 levels in [0, T]
    assert signed.compute_qparams()[0].item() == pytest.approx(threshold_signed / 7.5, rel=1e-6)


def test_relu_zero_spike_does_not_drag_the_threshold_to_zero():
    x = torch.relu(torch.randn(100_000, generator=torch.Generator().manual_seed(3))) ** 2  # half exact zeros
    top = x.max().item()
    for levels in (8, 16, 128):
        fixed = kl_calibration(x, levels)
        assert fixed.threshold >= top / 16  # first_bin = 128 of 2048
        assert fixed.hist[0] == (x < fixed.bin_edges[1]).sum().item()  # the result keeps the raw counts
    raw = kl_calibration(x, 8, first_bin=0, suppress_zero_spike=False).threshold
    assert raw < top / 100  # without the two details the 4-bit threshold collapses towards 0


def test_errors():
    with pytest.raises(QuantParamError, match="num_levels"):
        kl_from_histogram(np.ones(64), 1.0, num_levels=128)
    with pytest.raises(QuantParamError, match="bin_width"):
        kl_from_histogram(np.ones(256), 0.0)
    with pytest.raises(TensorValueError, match="NaN"):
        kl_calibration(torch.tensor([1.0, float("nan")]))
    with pytest.raises(TensorValueError, match="empty"):
        kl_calibration(torch.empty(0))


def test_all_zero_tensor():
    result = kl_calibration(torch.zeros(100))
    assert np.isfinite(result.threshold) and result.threshold > 0
