"""Observers: statistics they keep, the qparams they return, and their errors."""

import pytest
import torch

from mpqlab.errors import BitWidthError, QuantParamError, TensorValueError
from mpqlab.quant.observers import (
    EMAMinMaxObserver, MinMaxObserver, MSEObserver, PercentileObserver, channel_rows, clipping_mse_curve,
)
from mpqlab.quant.kl import KLObserver
from mpqlab.quant.uniform import fake_quantize, qparams_from_range

ALL = [MinMaxObserver, EMAMinMaxObserver, PercentileObserver, MSEObserver, KLObserver]


def gaussian_with_outlier(n=5000, outlier=40.0, seed=0):
    x = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    x[0] = outlier
    return x


def test_channel_rows():
    x = torch.arange(24.0).reshape(2, 3, 4)
    assert channel_rows(x, None).shape == (1, 24)
    rows = channel_rows(x, 1)
    assert rows.shape == (3, 8) and set(rows[1].tolist()) == set(x[:, 1].flatten().tolist())
    with pytest.raises(QuantParamError, match="ch_axis"):
        channel_rows(x, 3)


def test_minmax_accumulates_across_batches():
    ob = MinMaxObserver(8)
    x = torch.tensor([0.5, 2.0])
    assert ob(x) is x  # observers only watch
    ob(torch.tensor([-1.0, 1.0]))
    assert (ob.min_val.item(), ob.max_val.item()) == (-1.0, 2.0)
    scale, zero_point = ob.compute_qparams()
    expected = qparams_from_range(-1.0, 2.0, 8)
    assert scale.shape == () and torch.equal(scale, expected[0]) and torch.equal(zero_point, expected[1])


def test_minmax_per_channel_any_axis():
    x = torch.randn(4, 5, 6)
    ob = MinMaxObserver(8, symmetric=True, signed=True, ch_axis=1)
    ob(x)
    scale, zero_point = ob.compute_qparams()
    assert scale.shape == (5,) and (zero_point == 0).all()
    assert torch.allclose(scale, x.abs().amax(dim=(0, 2)) / 127.5)


def test_ema_follows_formula():
    ob = EMAMinMaxObserver(8, momentum=0.25)
    ob(torch.tensor([-1.0, 1.0]))
    ob(torch.tensor([-3.0, 5.0]))
    assert ob.min_val.item() == pytest.approx(-1.0 + 0.25 * (-3.0 + 1.0))
    assert ob.max_val.item() == pytest.approx(1.0 + 0.25 * (5.0 - 1.0))


def test_percentile_clips_the_outlier():
    x = gaussian_with_outlier()
    ob = PercentileObserver(8, percentile=99.9)
    ob(x)
    scale, _ = ob.compute_qparams()
    assert 2.5 < scale.item() * 255 < 8.0  # roughly the 0.1%..99.9% span of N(0, 1), not the outlier's 40
    ob100 = PercentileObserver(8, percentile=100.0)
    ob100(x)
    assert torch.equal(ob100.compute_qparams()[0], qparams_from_range(x.min(), x.max(), 8)[0])


def test_mse_curve_and_observer_beat_minmax():
    x = gaussian_with_outlier()
    ratios, mse = clipping_mse_curve(x, 4)
    assert ratios.shape == (100,) and mse.shape == (100, 1) and ratios[-1].item() == pytest.approx(1.0)
    ob = MSEObserver(4)
    ob(x)
    scale, zero_point = ob.compute_qparams()
    err_mse = (fake_quantize(x, scale, zero_point, 0, 15) - x).pow(2).mean()
    scale_mm, zp_mm = qparams_from_range(x.min(), x.max(), 4)
    err_minmax = (fake_quantize(x, scale_mm, zp_mm, 0, 15) - x).pow(2).mean()
    assert err_mse < 0.5 * err_minmax  # clipping the outlier pays off at 4 bits
    assert err_mse.item() == pytest.approx(mse.min().item(), rel=1e-4)


def test_mse_observer_per_channel():
    x = torch.randn(3, 100) * torch.tensor([[0.1], [1.0], [10.0]])
    ob = MSEObserver(4, symmetric=True, signed=True, ch_axis=0)
    ob(x)
    scale, zero_point = ob.compute_qparams()
    assert scale.shape == (3,) and scale[0] < scale[1] < scale[2]


def test_samples_are_bounded_and_seeded():
    x = torch.randn(10000)
    a, b = PercentileObserver(8, max_samples=500, seed=3), PercentileObserver(8, max_samples=500, seed=3)
    a(x)
    b(x)
    assert a.all_samples().shape == (1, 500) and torch.equal(a.all_samples(), b.all_samples())
    assert a.max_val.item() == x.max().item()  # the extremes are exact even when the sample is not


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("value", [0.0, 3.0, -2.0])
def test_constant_tensor_gives_valid_qparams(cls, value):
    ob = cls(8)
    ob(torch.full((50,), value))
    scale, zero_point = ob.compute_qparams()
    assert torch.isfinite(scale).all() and (scale > 0).all() and 0 <= zero_point.item() <= 255
    assert fake_quantize(torch.zeros(1), scale, zero_point, ob.q_min, ob.q_max).item() == 0.0


@pytest.mark.parametrize("cls", ALL)
def test_errors(cls):
    ob = cls(8)
    with pytest.raises(QuantParamError, match="no data"):
        ob.compute_qparams()
    with pytest.raises(TensorValueError, match="NaN"):
        ob(torch.tensor([1.0, float("nan")]))
    with pytest.raises(TensorValueError, match="empty"):
        ob(torch.empty(0, 3))
    with pytest.raises(BitWidthError):
        cls(17)


def test_channel_count_change_and_bad_parameters():
    ob = MinMaxObserver(8, ch_axis=0)
    ob(torch.randn(3, 4))
    with pytest.raises(QuantParamError, match="reset"):
        ob(torch.randn(5, 4))
    with pytest.raises(QuantParamError, match="ch_axis"):
        MinMaxObserver(8, ch_axis=2)(torch.randn(3, 4))
    with pytest.raises(QuantParamError, match="percentile"):
        PercentileObserver(8, percentile=120)
    with pytest.raises(QuantParamError, match="momentum"):
        EMAMinMaxObserver(8, momentum=-0.1)


@pytest.mark.parametrize("factor", [1e30, 1e-30])
@pytest.mark.parametrize("ch_axis", [None, 0])
def test_mse_observer_is_scale_equivariant(factor, ch_axis):
    # squared errors near 1e30 overflowed float32 (the chosen range clipped 99% of it); near 1e-30 they
    # underflowed to 0, so every candidate looked perfect and the first (the smallest) was chosen
    x = gaussian_with_outlier(n=3000, outlier=12.0).reshape(3, 1000)
    reference, scaled = MSEObserver(4, ch_axis=ch_axis), MSEObserver(4, ch_axis=ch_axis)
    reference(x)
    scaled(x * factor)
    (scale, zero_point), (scale_big, zero_point_big) = reference.compute_qparams(), scaled.compute_qparams()
    assert torch.allclose(scale_big / factor, scale, rtol=1e-4) and torch.equal(zero_point_big, zero_point)


def test_mse_curve_is_bit_for_bit_the_plain_formula():
    # the curve is computed on data divided by a power of two; that changes exponents only
    x = gaussian_with_outlier(n=500)
    ratios, mse = clipping_mse_curve(x, 4, num_candidates=10)
    for r, m in zip(ratios, mse[:, 0]):
        scale, zero_point = qparams_from_range(r * x.min(), r * x.max(), 4)
        assert float(m) == float((fake_quantize(x, scale, zero_point, 0, 15) - x).pow(2).mean())


def test_mse_num_candidates_is_checked_when_built():
    for bad in (0, -3, 2.5, True):
        with pytest.raises(QuantParamError, match="num_candidates must be an integer >= 1"):
            MSEObserver(8, num_candidates=bad)
    with pytest.raises(QuantParamError, match="num_candidates"):
        clipping_mse_curve(torch.randn(10), 8, num_candidates=0)
    with pytest.raises(QuantParamError, match="max_samples"):
        MSEObserver(8, max_samples=0)
