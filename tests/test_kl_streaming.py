"""KLObserver histograms every value, batch by batch, as pytorch-quantization's HistogramCalibrator.collect does.

The first batch fixes the bin width; later batches that reach further append bins of the same width, so the
histogram is that of all values on the first batch's edges, and one batch gives kl_calibration's threshold.
"""

import numpy as np
import pytest
import torch

from mpqlab.quant.kl import KLObserver, abs_histogram, first_bin_width, kl_calibration


def relu_batch(n, seed, scale=1.0):
    return torch.relu(torch.randn(n, generator=torch.Generator().manual_seed(seed))) * scale


@pytest.mark.parametrize("bits, signed_data", [(8, False), (4, False), (8, True), (6, True)])
def test_one_batch_gives_exactly_kl_calibration(bits, signed_data):
    x = torch.randn(30_000, generator=torch.Generator().manual_seed(bits))
    x = x if signed_data else torch.relu(x)
    x[7] = 9.0  # an outlier to clip
    ob = KLObserver(bits)
    ob(x)
    levels = 2 ** (bits - (1 if signed_data else 0))  # unsigned grid over x >= 0 uses all 2^b levels
    reference = kl_calibration(x, levels)
    hist, width = ob.histogram()
    assert width == reference.bin_edges[1] and np.array_equal(hist, reference.hist)
    expected = ob.qparams_for_range(ob.min_val.clamp(min=-reference.threshold),
                                    ob.max_val.clamp(max=reference.threshold))
    scale, zero_point = ob.compute_qparams()
    assert torch.equal(scale, expected[0]) and torch.equal(zero_point, expected[1])
    assert reference.threshold < 9.0  # the outlier is clipped, so the comparison is not trivially max|x|


def test_several_batches_give_the_histogram_of_all_values_on_the_first_edges():
    # the second batch reaches 3x further (bins are appended), the third stays inside; the first batch's
    # largest value sits exactly on its last edge and must end up in the bin that starts there
    batches = [relu_batch(10_000, 0), relu_batch(10_000, 1, scale=3.0), -relu_batch(5_000, 2, scale=0.5)]
    ob = KLObserver(8)
    for b in batches:
        ob(b)
    hist, width = ob.histogram()
    assert width == first_bin_width(batches[0].abs().max().item(), 2048)  # set by the first batch alone
    assert hist.shape[0] > 2048 and hist.shape[0] * width >= batches[1].max().item()
    every = torch.cat(batches).abs().double().numpy()
    expected, _ = np.histogram(every, bins=np.arange(hist.shape[0] + 1) * width)
    assert np.array_equal(hist, expected) and hist.sum() == every.size
    # the threshold is the search on that whole histogram
    assert torch.equal(torch.from_numpy(hist), abs_histogram(torch.cat(batches).abs(), width, hist.shape[0]))


def test_batches_give_the_same_threshold_as_all_values_at_once_when_the_first_holds_the_max():
    x = relu_batch(40_000, 3)
    x[0] = x.max() * 2  # the largest value is in the first batch, so the edges are those of the whole tensor
    ob = KLObserver(8)
    for part in x.split(10_000):
        ob(part)
    one = KLObserver(8)
    one(x)
    assert np.array_equal(ob.histogram()[0], one.histogram()[0])
    assert torch.equal(ob.compute_qparams()[0], one.compute_qparams()[0])


def test_all_zero_batches_wait_for_a_nonzero_value():
    ob = KLObserver(8)
    ob(torch.zeros(1000))
    scale, zero_point = ob.compute_qparams()  # only zeros so far: a valid grid, no NaN
    assert torch.isfinite(scale) and scale > 0 and zero_point.item() == 0
    assert ob.bin_width is None and ob.hist is None
    x = relu_batch(5000, 4)
    ob(x)
    hist, width = ob.histogram()
    assert width == first_bin_width(x.max().item(), 2048)  # the first nonzero batch sets the width
    assert hist[0] == 1000 + (x < width).sum().item() and hist.sum() == 6000
    assert torch.isfinite(ob.compute_qparams()[0])


def test_a_huge_later_batch_merges_bins_instead_of_growing_without_bound():
    first, huge = relu_batch(5000, 5), relu_batch(5000, 6, scale=1e6)
    ob = KLObserver(8, num_bins=256)  # at most 16 * 256 bins
    ob(first)
    width0 = ob.bin_width
    ob(huge)
    hist, width = ob.histogram()
    assert hist.shape[0] <= ob.max_bins and hist.sum() == 10_000
    factor = width / width0
    assert factor > 1 and factor == 2.0 ** round(np.log2(factor))  # merged in pairs: old edges are kept
    every = torch.cat([first, huge]).double().numpy()
    assert np.array_equal(hist, np.histogram(every, bins=np.arange(hist.shape[0] + 1) * width)[0])
    assert torch.isfinite(ob.compute_qparams()[0])


def test_memory_does_not_grow_with_the_number_of_batches_and_reset_clears():
    ob = KLObserver(8)
    for seed in range(5):
        ob(relu_batch(20_000, seed).clamp(max=2.0))  # the same range every batch: no bin is added
    assert ob.hist.shape == (2048,) and ob.histogram()[0].sum() == 100_000
    ob.reset()
    assert ob.hist is None and ob.bin_width is None and ob.zero_count == 0 and ob.min_val is None
