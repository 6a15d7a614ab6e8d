"""Uniform affine quantization: grids, qparams, fake_quantize against PyTorch's native ops, properties, errors."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mpqlab.errors import BitWidthError, QuantParamError, TensorValueError
from mpqlab.quant.observers import EMAMinMaxObserver, MinMaxObserver
from mpqlab.quant.uniform import (
    UniformQuantizer, default_act_quantizer, default_weight_quantizer, dequantize, fake_quantize,
    full_range_weight_quantizer, qparams_from_range, quant_range, quantize,
)

SETTINGS = settings(max_examples=100, deadline=None)
values = arrays(np.float32, st.integers(1, 64), elements=st.floats(-1e3, 1e3, width=32))


@st.composite
def grids(draw):
    """(bits, symmetric, signed, narrow) for every valid combination."""
    bits = draw(st.integers(1, 16))
    narrow = draw(st.booleans()) if bits > 1 else False
    return bits, draw(st.booleans()), draw(st.booleans()), narrow


@pytest.mark.parametrize("bits, signed, narrow, expected", [
    (8, False, False, (0, 255)), (8, True, False, (-128, 127)), (8, True, True, (-127, 127)),
    (8, False, True, (1, 255)), (4, True, False, (-8, 7)), (1, True, False, (-1, 0)), (16, False, False, (0, 65535)),
])
def test_quant_range(bits, signed, narrow, expected):
    assert quant_range(bits, signed, narrow) == expected


@pytest.mark.parametrize("bits", [0, 17, -3, 2.5, "8", None, True])
def test_bad_bits_raise_bitwidth_error(bits):
    with pytest.raises(BitWidthError, match="bits"):
        quant_range(bits)
    with pytest.raises(BitWidthError):
        qparams_from_range(-1.0, 1.0, bits)


def test_narrow_one_bit_is_refused():
    with pytest.raises(BitWidthError, match="narrow"):
        quant_range(1, signed=True, narrow=True)


def test_asymmetric_qparams_by_hand():
    scale, zero_point = qparams_from_range(-1.0, 3.0, 8)  # uint8 asymmetric
    assert scale.item() == pytest.approx(4 / 255)
    assert zero_point.item() == 64 and zero_point.dtype == torch.int32  # 0 - round(-1 / (4/255)) = round(63.75)


def test_symmetric_qparams_by_hand():
    scale, zero_point = qparams_from_range(-2.0, 1.0, 8, symmetric=True, signed=True)
    assert scale.item() == pytest.approx(2 / 127.5) and zero_point.item() == 0
    scale, _ = qparams_from_range(-2.0, 1.0, 8, symmetric=True, signed=True, narrow=True)
    assert scale.item() == pytest.approx(2 / 127)
    scale, zero_point = qparams_from_range(-2.0, 1.0, 8, symmetric=True, signed=False, narrow=True)
    assert scale.item() == pytest.approx(1 / 254) and zero_point.item() == 1  # unsigned: [0, x_max], zero at q_min


@pytest.mark.parametrize("value", [0.0, 5.0, -3.0, 1e-42])
def test_constant_range_gives_valid_quantizer(value):
    for symmetric in (False, True):
        scale, zero_point = qparams_from_range(value, value, 8, symmetric=symmetric, signed=symmetric)
        assert math.isfinite(scale.item()) and scale.item() > 0
        x = torch.full((10,), value)
        x_hat = fake_quantize(x, scale, zero_point, *quant_range(8, signed=symmetric))
        assert torch.isfinite(x_hat).all()
        if value in (5.0, -3.0) and not symmetric:  # the constant is the end of the range: exact up to float error
            assert torch.allclose(x_hat, x, rtol=1e-6)


def test_per_channel_qparams_shape():
    scale, zero_point = qparams_from_range(torch.tensor([-1.0, 0.0, -4.0]), torch.tensor([1.0, 0.0, 2.0]), 4)
    assert scale.shape == zero_point.shape == (3,)
    assert scale[1].item() == 1.0  # the all-zero channel


@pytest.mark.parametrize("x_min, x_max", [(1.0, -1.0), (float("nan"), 1.0), (-1.0, float("inf"))])
def test_bad_range_raises(x_min, x_max):
    with pytest.raises(QuantParamError, match="x_m"):
        qparams_from_range(x_min, x_max, 8)


@given(x=values, scale=st.floats(1e-3, 10.0), zero_point=st.integers(0, 255))
@SETTINGS
def test_matches_torch_per_tensor(x, scale, zero_point):
    x = torch.from_numpy(x).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    scale_t = torch.tensor(scale, dtype=torch.float32)
    ours = fake_quantize(x, scale_t, zero_point, 0, 255)
    ref = torch.fake_quantize_per_tensor_affine(x_ref, scale_t.item(), zero_point, 0, 255)
    assert torch.equal(ours, ref)
    g = torch.randn(x.shape)
    ours.backward(g)
    ref.backward(g)
    assert torch.equal(x.grad, x_ref.grad)


@given(data=st.data(), ch_axis=st.sampled_from([0, 1, 2, -1]))
@SETTINGS
def test_matches_torch_per_channel(data, ch_axis):
    shape = data.draw(st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 5)))
    x = torch.from_numpy(data.draw(arrays(np.float32, shape, elements=st.floats(-100, 100, width=32))))
    channels = shape[ch_axis]
    scale = torch.tensor(data.draw(st.lists(st.floats(0.0625, 5.0, width=32), min_size=channels, max_size=channels)))
    zero_point = torch.tensor(data.draw(st.lists(st.integers(-8, 7), min_size=channels, max_size=channels)),
                              dtype=torch.int32)
    x, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = fake_quantize(x, scale, zero_point, -8, 7, ch_axis=ch_axis)
    ref = torch.fake_quantize_per_channel_affine(x_ref, scale, zero_point, ch_axis % 3, -8, 7)
    assert torch.equal(ours, ref)
    ours.sum().backward()
    ref.sum().backward()
    assert torch.equal(x.grad, x_ref.grad)


def test_ste_gradient_is_one_inside_zero_outside():
    x = torch.tensor([-10.0, -0.3, 0.0, 0.7, 1.5, 10.0], requires_grad=True)
    fake_quantize(x, 0.5, 0, -4, 3).sum().backward()  # clipping range [-2.0, 1.5]
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]


@given(x=values, grid=grids())
@SETTINGS
def test_properties(x, grid):
    """Idempotent; error <= scale/2 inside the clipping range; <= 2^bits levels; zero exactly representable."""
    bits, symmetric, signed, narrow = grid
    x = torch.from_numpy(x)
    q_min, q_max = quant_range(bits, signed, narrow)
    scale, zero_point = qparams_from_range(x.min(), x.max(), bits, symmetric, signed, narrow)
    x_hat = fake_quantize(x, scale, zero_point, q_min, q_max)
    assert torch.equal(fake_quantize(x_hat, scale, zero_point, q_min, q_max), x_hat)
    s, z = scale.item(), zero_point.item()
    lo, hi = s * (q_min - z), s * (q_max - z)
    inside = (x >= lo) & (x <= hi)
    err = (x_hat - x).abs()[inside]
    assert (err <= s / 2 * (1 + 1e-5) + 1e-6 * x.abs()[inside]).all()
    q = quantize(x, scale, zero_point, q_min, q_max)
    assert q.unique().numel() <= 2**bits and q.min() >= q_min and q.max() <= q_max
    assert torch.equal(quantize(dequantize(q, scale, zero_point), scale, zero_point, q_min, q_max), q)
    assert fake_quantize(torch.zeros(1), scale, zero_point, q_min, q_max).item() == 0.0


def test_quantize_dequantize_roundtrip_per_channel():
    x = torch.randn(3, 5)
    scale, zero_point = qparams_from_range(x.min(1).values, x.max(1).values, 8)
    q = quantize(x, scale, zero_point, 0, 255, ch_axis=0)
    assert q.dtype == torch.int32
    assert torch.allclose(dequantize(q, scale, zero_point, ch_axis=0), fake_quantize(x, scale, zero_point, 0, 255, 0))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(scale=0.0), QuantParamError, "scale"),
    (dict(scale=-1.0), QuantParamError, "scale"),
    (dict(scale=float("nan")), QuantParamError, "scale"),
    (dict(zero_point=300), QuantParamError, "zero_point"),
    (dict(zero_point=1.5), QuantParamError, "integers"),
    (dict(q_min=5, q_max=5), QuantParamError, "q_min"),
    (dict(ch_axis=2), QuantParamError, "ch_axis"),
    (dict(ch_axis=-3), QuantParamError, "ch_axis"),
    (dict(scale=torch.ones(4), zero_point=torch.zeros(4), ch_axis=1), QuantParamError, "3 scales"),
    (dict(scale=torch.ones(2)), QuantParamError, "per-tensor"),
])
def test_bad_qparams_raise(kwargs, error, match):
    args = dict(x=torch.randn(2, 3), scale=0.1, zero_point=0, q_min=0, q_max=255, ch_axis=None) | kwargs
    with pytest.raises(error, match=match):
        fake_quantize(**args)


@pytest.mark.parametrize("x, match", [
    (torch.empty(0), "empty"), (torch.tensor([1.0, float("nan")]), "NaN"), (torch.tensor([float("inf")]), "Inf"),
])
def test_bad_tensors_raise(x, match):
    with pytest.raises(TensorValueError, match=match):
        fake_quantize(x, 0.1, 0, 0, 255)
    with pytest.raises(TensorValueError, match=match):
        quantize(x, 0.1, 0, 0, 255)


def test_dynamic_quantizer_follows_each_tensor():
    q = UniformQuantizer(MinMaxObserver(4, symmetric=True, signed=True, ch_axis=0), mode="dynamic")
    for _ in range(2):
        w = torch.randn(6, 3, 3, 3)
        rows = w.reshape(6, -1)
        scale, zero_point = qparams_from_range(rows.min(1).values, rows.max(1).values, 4, True, True)
        assert torch.equal(q(w), fake_quantize(w, scale, zero_point, -8, 7, ch_axis=0))


def test_static_quantizer_calibrates_then_freezes():
    q = UniformQuantizer(MinMaxObserver(8), mode="static")
    assert q.calibrating
    q(torch.tensor([0.0, 1.0]))
    q(torch.tensor([-1.0, 3.0]))
    q.freeze()
    assert q.scale.item() == pytest.approx(4 / 255) and q.zero_point.item() == 64
    out = q(torch.tensor([100.0]))  # frozen: the new extreme neither changes qparams nor escapes the clip
    assert out.item() == pytest.approx(3.0, abs=4 / 255) and q.scale.item() == pytest.approx(4 / 255)
    q.bits = 4  # re-derives the frozen qparams from the same statistics on the new grid
    assert q.observer.bits == 4 and q.scale.item() == pytest.approx(4 / 15)
    q.unfreeze()
    assert q.calibrating and q.observer.min_val is None
    with pytest.raises(BitWidthError):
        q.bits = 0


def test_frozen_per_channel_state_dict_roundtrip():
    def make():
        return UniformQuantizer(MinMaxObserver(4, symmetric=True, signed=True, ch_axis=0), mode="static")

    q = make()
    w = torch.randn(5, 7)
    q(w)
    q.freeze()
    fresh = make()
    fresh.load_state_dict(q.state_dict())
    assert not fresh.calibrating and fresh.scale.shape == (5,)
    assert torch.equal(fresh(w), q(w))


def test_bad_mode_and_dynamic_freeze_raise():
    with pytest.raises(QuantParamError, match="mode"):
        UniformQuantizer(MinMaxObserver(8), mode="sometimes")
    with pytest.raises(QuantParamError, match="static"):
        UniformQuantizer(MinMaxObserver(8), mode="dynamic").freeze()


def test_default_factories():
    w_q = default_weight_quantizer(4, "conv", None)
    assert w_q.mode == "dynamic" and w_q.bits == 4
    assert (w_q.observer.symmetric, w_q.observer.signed, w_q.observer.ch_axis) == (True, True, 0)
    assert w_q.observer.narrow and (w_q.observer.q_min, w_q.observer.q_max) == (-7, 7)
    a_q = default_act_quantizer(6, "conv", None)
    assert a_q.mode == "static" and isinstance(a_q.observer, EMAMinMaxObserver)
    assert (a_q.observer.symmetric, a_q.observer.signed, a_q.observer.ch_axis) == (False, False, None)


def _per_channel_codes(w, scale, q_min, q_max):
    return quantize(w, scale, torch.zeros(len(scale), dtype=torch.int32), q_min, q_max, ch_axis=0)


def test_default_weight_grid_is_the_restricted_range():
    # 4 bits: codes in [-7, 7], scale_c = max|w_c| / 7, and each channel's largest |w| is on the grid exactly
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3) * torch.linspace(0.1, 3.0, 6)[:, None, None, None]
    w_q = default_weight_quantizer(4)
    w_hat = w_q(w)
    scale, zero_point = w_q.observer.compute_qparams()
    max_abs = w.reshape(6, -1).abs().amax(dim=1)  # (C,)
    assert torch.allclose(scale, max_abs / 7) and torch.equal(zero_point, torch.zeros(6, dtype=torch.int32))
    codes = _per_channel_codes(w, scale, -7, 7)
    assert codes.min() >= -7 and codes.max() <= 7
    assert set(codes.reshape(6, -1).abs().amax(dim=1).tolist()) == {7}  # every channel reaches its top code
    assert torch.allclose(w_hat.reshape(6, -1).abs().amax(dim=1), max_abs)
    assert torch.equal(w_hat, fake_quantize(w, scale, zero_point, -7, 7, ch_axis=0))
    # the grid is symmetric: quantizing -w gives exactly -w_hat
    assert torch.equal(default_weight_quantizer(4)(-w), -w_hat)


def test_default_weight_grid_at_8_bits_is_int8_127():
    w = torch.tensor([[-0.5, 0.25, 1.0], [2.0, -4.0, 0.0]])
    w_q = default_weight_quantizer(8)
    w_q(w)
    scale, _ = w_q.observer.compute_qparams()
    assert (w_q.observer.q_min, w_q.observer.q_max) == (-127, 127)
    assert torch.allclose(scale, torch.tensor([1.0, 4.0]) / 127)


def test_full_range_weight_grid_is_still_available():
    torch.manual_seed(1)
    w = torch.randn(5, 8)
    max_abs = w.abs().amax(dim=1)
    for w_q in (full_range_weight_quantizer(4), default_weight_quantizer(4, narrow=False)):
        w_hat = w_q(w)
        scale, _ = w_q.observer.compute_qparams()
        assert not w_q.observer.narrow and (w_q.observer.q_min, w_q.observer.q_max) == (-8, 7)
        assert torch.allclose(scale, max_abs / 7.5)
        assert torch.equal(w_hat, fake_quantize(w, scale, torch.zeros_like(scale, dtype=torch.int32), -8, 7, ch_axis=0))
        codes = _per_channel_codes(w, scale, -8, 7)
        assert codes.min() >= -8 and codes.max() <= 7
    # the largest |w| of each channel sits halfway between two codes: it moves by half a step
    top_error = (w_hat - w).abs().gather(1, w.abs().argmax(dim=1, keepdim=True)).squeeze(1)
    assert torch.allclose(top_error, scale / 2, rtol=1e-5)


def test_restricted_weight_grid_needs_two_bits():
    with pytest.raises(BitWidthError, match="narrow"):
        default_weight_quantizer(1)
    w_q = default_weight_quantizer(2)
    with pytest.raises(BitWidthError, match="from 2 to 16, got 1"):
        w_q.bits = 1  # refused at once, not at the next forward
    assert w_q.bits == 2
    assert full_range_weight_quantizer(1).bits == 1  # the full range keeps its 1-bit grid {-1, 0}


def test_quantize_model_uses_the_restricted_weight_grid_by_default():
    from mpqlab.quant.policy import quantize_model

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    qmodel = quantize_model(model, {"0": (4, 8), "2": (3, None)})
    assert (qmodel[0].w_quantizer.observer.q_min, qmodel[0].w_quantizer.observer.q_max) == (-7, 7)
    assert (qmodel[2].w_quantizer.observer.q_min, qmodel[2].w_quantizer.observer.q_max) == (-3, 3)
    full = quantize_model(model, {"0": (4, 8)}, weight_quantizer=full_range_weight_quantizer)
    assert (full[0].w_quantizer.observer.q_min, full[0].w_quantizer.observer.q_max) == (-8, 7)


def test_float16_is_quantized_in_float32_and_returned_as_float16():
    # 1 / scale overflowed float16 for a range this small, and every value came out clipped
    x = torch.linspace(-2e-4, 3e-4, 50)
    out = UniformQuantizer(MinMaxObserver(8))(x.half())
    expected = UniformQuantizer(MinMaxObserver(8))(x.half().float())
    assert out.dtype == torch.float16 and torch.equal(out, expected.half())
    out = UniformQuantizer(MinMaxObserver(8))(x.bfloat16())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_integer_and_bool_tensors_are_refused():
    # [-7, 3, 20, 5] used to be quantized with a scale truncated to an integer
    q = UniformQuantizer(MinMaxObserver(4))
    with pytest.raises(TensorValueError, match=r"floating-point tensors; .* is int64, convert it with x\.float\(\)"):
        q(torch.tensor([-7, 3, 20, 5]))
    with pytest.raises(TensorValueError, match="bool"):
        q(torch.tensor([True, False]))
    with pytest.raises(TensorValueError, match="int32"):
        MinMaxObserver(8)(torch.tensor([1, 2], dtype=torch.int32))
