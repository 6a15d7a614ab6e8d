"""mpqlab.limpq.sensitivity: single-layer LSQ models, step read-out, values per level, normalisation, fit."""

import math

import numpy as np
import pytest
import torch

from mpqlab.errors import BitWidthError, PolicyError, QuantParamError, TensorValueError
from mpqlab.limpq.sensitivity import (
    initialize_steps, layer_steps, linear_fit, normalised_degradation, quantize_single_layer, values_per_level,
)
from mpqlab.models import mobilenet_v1_small
from mpqlab.quant.layers import QuantConv2d
from mpqlab.quant.lsq import LSQQuantizer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return mobilenet_v1_small().eval()


def test_only_the_named_layer_is_quantized(model):
    q = quantize_single_layer(model, "dw4.conv", 2)
    quantized = [n for n, m in q.named_modules() if isinstance(m, QuantConv2d)]
    assert quantized == ["dw4.conv"]
    w_q, a_q = q.dw4.conv.w_quantizer, q.dw4.conv.a_quantizer
    assert isinstance(w_q, LSQQuantizer) and w_q.signed and w_q.bits == 2
    assert isinstance(a_q, LSQQuantizer) and not a_q.signed and a_q.bits == 2
    assert not isinstance(model.dw4.conv, QuantConv2d)  # the float model is left alone


def test_initial_steps_follow_lsq(model):
    q = quantize_single_layer(model, "pw7.conv", 4)
    images = torch.randn(8, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    initialize_steps(q, images)
    steps = layer_steps(q, "pw7.conv")
    w = q.pw7.conv.weight.detach()
    assert steps["w_step"] == pytest.approx(2 * w.abs().mean().item() / math.sqrt(7), rel=1e-5)
    assert steps["a_step"] > 0
    w_hat = q.pw7.conv.w_quantizer(w)
    assert len(torch.unique(w_hat)) <= 16 and torch.allclose(w_hat / steps["w_step"], torch.round(w_hat / steps["w_step"]))


def test_bad_layers_and_bits_are_refused(model):
    with pytest.raises(PolicyError, match="first layer"):
        quantize_single_layer(model, "conv1.conv", 4)
    with pytest.raises(PolicyError, match="dw99"):
        quantize_single_layer(model, "dw99.conv", 4)
    with pytest.raises(BitWidthError, match="1"):
        quantize_single_layer(model, "dw1.conv", 1)
    with pytest.raises(PolicyError, match="no LSQ"):
        layer_steps(model, "dw1.conv")


def test_values_per_level_matches_brute_force():
    x = torch.randn(500, generator=torch.Generator().manual_seed(2)).round(decimals=2)  # many repeats
    counts = values_per_level(x, 0.33, 3)  # 0.33 keeps x / s off the .5 ties
    assert list(counts) == list(range(-4, 4))
    for q, n in counts.items():
        distinct = {round(v, 6) for v in x.tolist() if max(-4, min(3, round(v / 0.33))) == q}
        assert n == len(distinct)
    assert sum(counts.values()) == len(torch.unique(x))


def test_a_larger_step_puts_more_distinct_values_on_a_level():
    x = torch.linspace(-1, 1, 2001)
    small, large = values_per_level(x, 0.1, 4), values_per_level(x, 0.2, 4)
    assert large[1] > small[1] and large[1] == pytest.approx(2 * small[1], abs=1)


def test_values_per_level_errors():
    with pytest.raises(QuantParamError, match="scale"):
        values_per_level(torch.ones(3), 0.0, 2)
    with pytest.raises(TensorValueError, match="empty"):
        values_per_level(torch.ones(0), 0.1, 2)
    with pytest.raises(BitWidthError):
        values_per_level(torch.ones(3), 0.1, 1, signed=True)


def test_normalised_degradation():
    d = normalised_degradation(0.9, [0.8, 0.85, 0.91])
    assert np.allclose(d, [1.0, 0.5, -0.1])
    with pytest.raises(TensorValueError, match="no run is below"):
        normalised_degradation(0.9, [0.9, 0.95])
    with pytest.raises(TensorValueError, match="finite"):
        normalised_degradation(0.9, [float("nan")])


def test_linear_fit_matches_numpy():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=20), rng.normal(size=20)
    slope, intercept = linear_fit(x, y)
    assert np.allclose([slope, intercept], np.polyfit(x, y, 1))
    with pytest.raises(TensorValueError, match="distinct x"):
        linear_fit([1.0, 1.0], [0.0, 1.0])
