"""Layer-by-layer drift of a quantized network from the float one."""

import pytest
import torch
from torch import nn

from mpqlab.errors import PolicyError, TensorValueError
from mpqlab.layer_error import layer_outputs, layer_relative_errors, weighted_layers
from mpqlab.qat import build_qat_model


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4 * 2 * 2, 3)).eval()


def test_a_model_against_itself_has_no_error():
    model, x = small_net(), torch.randn(8, 1, 8, 8)
    errors = layer_relative_errors(model, model, x)
    assert list(errors) == ["0", "2", "4", "7"] and all(e == 0.0 for e in errors.values())


def test_error_starts_at_the_first_quantized_layer_and_grows_with_fewer_bits():
    model, x = small_net(), torch.rand(16, 1, 8, 8)  # non-negative: every layer gets an unsigned grid here
    by_bits = {}
    for bits in (8, 2):
        q = build_qat_model(model, "lsq", bits, first_last_bits=None)
        q(x)  # LSQ's lazy step initialisation
        by_bits[bits] = layer_relative_errors(model, q, x)
    assert 0 < by_bits[8]["0"] < 0.05  # 8 bits: close to float already at the first layer
    assert all(by_bits[2][n] > by_bits[8][n] for n in by_bits[2])
    assert by_bits[2]["7"] > 0.2


def test_w_bits_and_a_bits_can_differ():
    model = small_net()
    q = build_qat_model(model, "lsq", 2, first_last_bits=None, a_bits=4)
    assert q[2].w_quantizer.bits == 2 and q[2].a_quantizer.bits == 4


def test_bad_input_is_named():
    model = small_net()
    with pytest.raises(PolicyError, match="conv9"):
        layer_outputs(model, torch.randn(2, 1, 8, 8), ["conv9"])
    with pytest.raises(TensorValueError, match="NaN"):
        layer_relative_errors(model, model, torch.full((2, 1, 8, 8), float("nan")))
    assert weighted_layers(model) == ["0", "2", "4", "7"]
