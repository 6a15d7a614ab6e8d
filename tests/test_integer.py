"""Integer-only inference: fixed-point multipliers, gemmlowp rounding, and agreement with the float layer."""

from fractions import Fraction

import pytest
import torch
from torch import nn

from mpqlab.errors import QuantParamError
from mpqlab.quant.integer import (
    INT32_MAX, INT32_MIN, QParams, conv2d_accumulate, float_reference, integer_forward, linear_accumulate,
    quantize_bias, quantize_multiplier, quantize_weight, requantize, rounding_doubling_high_mul,
    rounding_right_shift,
)
from mpqlab.quant.uniform import qparams_from_range, quantize


def round_half_away(value: Fraction) -> int:
    """Exact reference rounding: to nearest, ties away from zero."""
    sign = 1 if value >= 0 else -1
    return sign * int(abs(value) + Fraction(1, 2))


@pytest.mark.parametrize("m", [1e-6, 0.0123, 0.3, 0.5, 0.75, 0.9999999999, 1.0, 3.7, 1234.5])
def test_quantize_multiplier(m):
    m0, shift = quantize_multiplier(m)
    assert 2**30 <= m0 < 2**31
    approx = Fraction(m0, 2**31) * Fraction(2) ** (-shift)
    assert abs(approx - Fraction(m)) <= Fraction(2) ** (-31 - shift)  # half an ulp of a 31-bit mantissa
    assert (shift < 0) == (approx >= 1)  # a left shift only for M >= 1 (0.9999999999 rounds up to 1)


@pytest.mark.parametrize("m", [0.0, -0.5, float("nan"), float("inf")])
def test_quantize_multiplier_rejects(m):
    with pytest.raises(QuantParamError, match="multiplier"):
        quantize_multiplier(m)


def test_high_mul_and_shift_round_like_exact_arithmetic():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(INT32_MIN, INT32_MAX, (2000,), generator=g, dtype=torch.int64)
    a = torch.cat([a, torch.tensor([0, 1, -1, INT32_MIN, INT32_MAX])])
    m0 = torch.randint(2**30, 2**31, (a.numel(),), generator=g, dtype=torch.int64)
    got = rounding_doubling_high_mul(a, m0)
    for ai, mi, gi in zip(a.tolist(), m0.tolist(), got.tolist()):
        assert gi == round_half_away(Fraction(ai * mi, 2**31))
    x = torch.tensor([5, -5, 6, -6, 7, -7, 4, -4, 123456789, -123456789, 0])
    for shift in range(0, 6):
        got = rounding_right_shift(x, torch.tensor(shift)).tolist()
        assert got == [round_half_away(Fraction(v, 2**shift)) for v in x.tolist()]


def test_requantize_is_within_one_of_real_arithmetic():
    acc = torch.randint(-(2**20), 2**20, (64, 3), generator=torch.Generator().manual_seed(1))
    multiplier = torch.tensor([0.0007, 0.013, 1.7], dtype=torch.float64)
    out = QParams(scale=1.0, zero_point=10, q_min=0, q_max=255)
    got = requantize(acc, multiplier, out, ch_axis=1)
    exact = (10 + acc.double() * multiplier).round().clamp(0, 255)
    assert (got.double() - exact).abs().max() <= 1


def make_input(shape, seed=0, relu=False):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    x = x.relu() if relu else x
    scale, zero_point = qparams_from_range(x.min(), x.max(), 8)  # uint8, asymmetric
    x_qp = QParams(scale.item(), zero_point.item(), 0, 255)
    return quantize(x, scale, zero_point, 0, 255), x_qp


def output_qparams(layer, q_x, x_qp):
    """Output qparams from the float layer's range on the dequantized input."""
    with torch.no_grad():
        y = layer((q_x.float() - x_qp.zero_point) * x_qp.scale)
    scale, zero_point = qparams_from_range(y.min(), y.max(), 8)
    return QParams(scale.item(), zero_point.item(), 0, 255)


LAYERS = {
    "linear": (lambda: nn.Linear(40, 7), (16, 40)),
    "linear_no_bias": (lambda: nn.Linear(40, 7, bias=False), (16, 40)),
    "conv": (lambda: nn.Conv2d(3, 8, 3, padding=1), (2, 3, 9, 9)),
    "conv_stride_dilation": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2), (2, 4, 11, 10)),
    "depthwise": (lambda: nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False), (2, 6, 8, 8)),
    "grouped_1x1": (lambda: nn.Conv2d(6, 4, 1, groups=2), (2, 6, 5, 5)),
}


@pytest.mark.parametrize("name", LAYERS)
def test_integer_path_matches_fake_quantized_float_layer(name):
    torch.manual_seed(0)
    make_layer, shape = LAYERS[name]
    layer = make_layer()
    q_x, x_qp = make_input(shape, relu=name == "conv")
    y_qp = output_qparams(layer, q_x, x_qp)
    q_y = integer_forward(layer, q_x, x_qp, y_qp)
    with torch.no_grad():
        reference = float_reference(layer, q_x, x_qp, y_qp)
    assert q_y.shape == reference.shape
    assert (q_y - reference).abs().max().item() <= 1  # within one output quantization step
    assert (q_y == reference).float().mean() > 0.95  # and almost always identical
    assert q_y.min() >= 0 and q_y.max() <= 255


@pytest.mark.parametrize("name", LAYERS)
def test_accumulators_and_bias_fit_in_int32(name):
    torch.manual_seed(0)
    make_layer, shape = LAYERS[name]
    layer = make_layer()
    q_x, x_qp = make_input(shape)
    q_w, w_scale, w_zp = quantize_weight(layer)
    assert q_w.abs().max() <= 127 and (w_zp == 0).all()
    q_b = quantize_bias(layer, x_qp.scale, w_scale)
    if isinstance(layer, nn.Conv2d):
        acc = conv2d_accumulate(q_x, x_qp.zero_point, q_w, w_zp, q_b, layer)
        with torch.no_grad():  # the same sums in float64, which is exact for these integer sizes
            ref = nn.functional.conv2d((q_x.double() - x_qp.zero_point), q_w.double(), q_b.double(), layer.stride,
                                       layer.padding, layer.dilation, layer.groups)
    else:
        acc = linear_accumulate(q_x, x_qp.zero_point, q_w, w_zp, q_b)
        ref = (q_x.double() - x_qp.zero_point) @ q_w.double().T + q_b.double()
    assert acc.dtype == torch.int64 and torch.equal(acc.double(), ref)
    for values in (acc, q_b):
        assert INT32_MIN <= values.min().item() and values.max().item() <= INT32_MAX


def test_unsupported_layers_raise():
    q_x, x_qp = make_input((1, 2, 5, 5))
    with pytest.raises(QuantParamError, match="padding"):
        integer_forward(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), q_x, x_qp, x_qp)
    with pytest.raises(TypeError, match="Linear"):
        integer_forward(nn.BatchNorm2d(2), q_x, x_qp, x_qp)
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.bias.fill_(1e6)
    with pytest.raises(QuantParamError, match="int32 bias"):
        quantize_bias(layer, 1e-6, torch.full((2,), 1e-6))
