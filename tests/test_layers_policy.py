"""Quantized layers and bit-width policies: quantize_model, validation errors, reading a policy back."""

import io

import pytest
import torch
from torch import nn

from mpqlab.errors import BitWidthError, PolicyError
from mpqlab.quant.layers import QuantConv2d, QuantLinear
from mpqlab.quant.observers import MinMaxObserver
from mpqlab.quant.policy import model_policy, quantizable_layers, quantize_model, uniform_policy, validate_policy
from mpqlab.quant.ptq import calibrate
from mpqlab.quant.quantizer import FullPrecision
from mpqlab.quant.uniform import UniformQuantizer


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 6 * 6, 5),
    )


X = torch.randn(8, 1, 6, 6, generator=torch.Generator().manual_seed(1))


def test_quantizable_layers_and_uniform_policy():
    model = small_model()
    assert quantizable_layers(model) == ["0", "2", "5"]
    assert uniform_policy(model, 4, 8) == {"0": (4, 8), "2": (4, 8), "5": (4, 8)}
    assert uniform_policy(model, 2, 2, first_last_bits=8) == {"0": (8, 8), "2": (2, 2), "5": (8, 8)}


def test_quantize_model_swaps_layers_and_reads_back():
    model = small_model()
    qmodel = quantize_model(model, uniform_policy(model, 4, 8))
    assert isinstance(qmodel[0], QuantConv2d) and isinstance(qmodel[2], QuantConv2d)
    assert isinstance(qmodel[5], QuantLinear)
    assert isinstance(model[0], nn.Conv2d) and not isinstance(model[0], QuantConv2d)  # original untouched
    assert model_policy(qmodel) == {"0": (4, 8), "2": (4, 8), "5": (4, 8)}
    assert qmodel[2].groups == 4 and qmodel[0].padding == (1, 1)


def test_quantized_model_runs_trains_and_degrades_with_fewer_bits():
    model = small_model()
    ref = model(X)
    errors = {}
    for bits in (16, 8, 2):
        qmodel = quantize_model(model, uniform_policy(model, bits, bits))
        calibrate(qmodel, X)
        errors[bits] = (qmodel(X) - ref).abs().max().item()
    assert errors[16] < 1e-3 < errors[8] < errors[2]
    qmodel = quantize_model(model, uniform_policy(model, 4, 4))
    calibrate(qmodel, X)
    qmodel(X).sum().backward()  # the STE lets gradients reach every weight
    assert all(qmodel[i].weight.grad is not None and qmodel[i].weight.grad.abs().sum() > 0 for i in (0, 2, 5))


def test_partial_and_full_precision_policies():
    model = small_model()
    qmodel = quantize_model(model, {"2": (None, 4)})
    assert isinstance(qmodel[2].w_quantizer, FullPrecision) and qmodel[2].a_quantizer.bits == 4
    assert not isinstance(qmodel[0], QuantConv2d)
    assert model_policy(qmodel) == {"2": (None, 4)}
    requantized = quantize_model(qmodel, {"2": (3, None)})  # an already quantized layer gets new quantizers
    assert model_policy(requantized) == {"2": (3, None)}


def test_inplace_and_custom_factory():
    model = small_model()

    def per_tensor_weights(bits, name, layer):
        return UniformQuantizer(MinMaxObserver(bits, symmetric=True, signed=True), mode="dynamic")

    out = quantize_model(model, uniform_policy(model, 6, 6), weight_quantizer=per_tensor_weights, inplace=True)
    assert out is model and model[0].w_quantizer.observer.ch_axis is None


@pytest.mark.parametrize("policy, error, match", [
    ({"nope": (4, 4)}, PolicyError, "unknown layer"),
    ({"0": (0, 4)}, BitWidthError, "w_bits of '0'"),
    ({"0": (4, 17)}, BitWidthError, "a_bits of '0'"),
    ({"0": (4.5, 4)}, BitWidthError, "w_bits"),
    ({"0": ("8", 4)}, BitWidthError, "w_bits"),
    ({"0": 4}, PolicyError, "pair"),
    ([("0", (4, 4))], PolicyError, "dict"),
])
def test_bad_policies_raise(policy, error, match):
    with pytest.raises(error, match=match):
        quantize_model(small_model(), policy)


def test_validate_policy_normalises_bits():
    assert validate_policy(small_model(), {"0": (8.0, None)}) == {"0": (8, None)}


def test_calibrated_model_state_dict_roundtrip():
    model = small_model()
    policy = uniform_policy(model, 4, 4)
    qmodel = quantize_model(model, policy)
    calibrate(qmodel, X)
    buffer = io.BytesIO()
    torch.save(qmodel.state_dict(), buffer)
    buffer.seek(0)
    fresh = quantize_model(small_model(), policy)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert not fresh[0].a_quantizer.calibrating
    assert torch.equal(fresh(X), qmodel(X))
