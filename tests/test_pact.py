"""PACT activations and DoReFa weights: formulas, hand-computed gradients, the alpha L2 term, bad inputs."""

import math

import pytest
import torch
from torch import nn

from mpqlab.errors import BitWidthError, QuantParamError, TensorValueError
from mpqlab.quant.pact import (
    DoReFaWeightQuantizer, PACTQuantizer, dorefa_weight, pact_act_quantizer, pact_l2, pact_quantize,
    pact_weight_quantizer,
)
from mpqlab.quant.policy import quantize_model, uniform_policy


def test_pact_values_and_gradients_by_hand():
    x = torch.tensor([-1.0, 0.4, 0.9, 2.0, 3.0], requires_grad=True)
    alpha = torch.tensor(2.0, requires_grad=True)
    y = pact_quantize(x, alpha, 2)  # 3 steps of 2/3 on [0, 2]
    y.backward(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    # y = [0, 0.4, 0.9, 2, 2]; y * 3 / 2 = [0, 0.6, 1.35, 3, 3] -> rounds to [0, 1, 1, 3, 3]
    assert y.tolist() == pytest.approx([0.0, 2 / 3, 2 / 3, 2.0, 2.0])
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 0.0, 0.0]  # 1 for 0 <= x < alpha (STE through round)
    assert float(alpha.grad) == 4.0 + 5.0  # 1 where x >= alpha (the tie x = alpha included), else 0


def test_pact_quantizer_and_bad_inputs():
    q = PACTQuantizer(4, alpha=3.0)
    out = q(torch.tensor([0.1, 1.0, 5.0]))
    assert out.tolist() == pytest.approx([0.0, 1.0, 3.0])  # grid step 3/15 = 0.2
    with pytest.raises(QuantParamError):
        PACTQuantizer(4, alpha=0.0)
    with pytest.raises(QuantParamError):
        PACTQuantizer(4, alpha=-2.0)
    with pytest.raises(BitWidthError):
        PACTQuantizer(0)
    with pytest.raises(BitWidthError):
        q.bits = 17
    with pytest.raises(TensorValueError):
        q(torch.empty(0))
    with torch.no_grad():
        q.alpha.fill_(-0.1)  # what a too-large learning rate can do
    with pytest.raises(QuantParamError, match="-0.1"):
        q(torch.ones(3))


def test_pact_l2_sums_alpha_squared():
    model = nn.Sequential(PACTQuantizer(4, alpha=2.0), nn.ReLU(), PACTQuantizer(2, alpha=3.0))
    reg = pact_l2(model)
    assert float(reg.detach()) == pytest.approx(13.0)
    reg.backward()
    assert float(model[0].alpha.grad) == 4.0 and float(model[2].alpha.grad) == 6.0
    assert float(pact_l2(nn.Linear(2, 2))) == 0.0


def test_dorefa_values_and_gradients_by_hand():
    w_list = [-0.8, 0.1, 0.5, 1.0]
    upstream = [1.0, -2.0, 0.5, 3.0]
    w = torch.tensor(w_list, requires_grad=True)
    y = dorefa_weight(w, 2)
    y.backward(torch.tensor(upstream))
    t = [math.tanh(v) for v in w_list]
    m = max(abs(v) for v in t)  # reached at w = 1.0
    expected = [2 * round((v / (2 * m) + 0.5) * 3) / 3 - 1 for v in t]
    assert y.tolist() == pytest.approx(expected)
    # STE: dy/dw_i = 2 d w_t / d w_i; w_t = tanh(w) / (2 m) + 1/2 with m = tanh(w_3)
    sech2 = [1 - v * v for v in t]
    grad = [2 * g * s2 / (2 * m) for g, s2 in zip(upstream, sech2)]
    grad[3] -= 2 * sum(g * v for g, v in zip(upstream, t)) / (2 * m * m) * sech2[3]  # through m
    assert w.grad.tolist() == pytest.approx(grad, rel=1e-5)


def test_dorefa_quantizer_scale_choice():
    w = torch.tensor([-0.8, 0.1, 0.5, 1.0])
    normalized = DoReFaWeightQuantizer(3, output_scale="normalized")(w)
    assert normalized.abs().max() == 1.0 and len(torch.unique(normalized)) <= 8
    small = w * 0.3  # max_abs (the default) rescales [-1, 1] to [-max|w|, max|w|]
    rescaled = DoReFaWeightQuantizer(3)(small)
    assert torch.allclose(rescaled, DoReFaWeightQuantizer(3, output_scale="normalized")(small) * 0.3)
    assert float(rescaled.abs().max()) == pytest.approx(0.3)
    with pytest.raises(BitWidthError):
        DoReFaWeightQuantizer(1)
    with pytest.raises(TensorValueError):
        DoReFaWeightQuantizer(4)(torch.empty(0))


def test_factories_plug_into_quantize_model():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3))
    qmodel = quantize_model(model, uniform_policy(model, 4, 4), weight_quantizer=pact_weight_quantizer,
                            act_quantizer=pact_act_quantizer)
    loss = qmodel(torch.rand(2, 1, 4, 4) * 20).sum() + 1e-4 * pact_l2(qmodel)
    loss.backward()
    alphas = [p for name, p in qmodel.named_parameters() if name.endswith("alpha")]
    assert len(alphas) == 2 and all(a.grad is not None for a in alphas)


@pytest.mark.parametrize("output_scale", ["max_abs", "normalized"])
def test_dorefa_all_zero_weight_quantizes_to_zeros_with_straight_through_gradient(output_scale):
    # a pruned layer: max|tanh w| = 0 made the formula 0/0 and the whole layer NaN (issue #12)
    w = torch.zeros(2, 3, requires_grad=True)
    w_q = DoReFaWeightQuantizer(4, output_scale)(w)
    assert torch.equal(w_q, torch.zeros(2, 3))
    w_q.backward(torch.arange(6.0).reshape(2, 3))
    assert torch.equal(w.grad, torch.arange(6.0).reshape(2, 3))  # gradient 1, the small-weight limit
    assert torch.equal(dorefa_weight(torch.zeros(4), 2), torch.zeros(4))
