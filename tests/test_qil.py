"""QIL: the transformer and discretiser against the paper's formulas, gradients by hand, progressive training."""

import math

import pytest
import torch
from torch import nn

from mpqlab.errors import BitWidthError, PolicyError, QuantParamError, TensorValueError
from mpqlab.quant.policy import quantize_model, uniform_policy
from mpqlab.quant.qil import (
    QILQuantizer, progressive_schedule, qil_act_quantizer, qil_act_transform, qil_discretize,
    qil_weight_quantizer, qil_weight_transform, set_bits,
)

C, D, GAMMA = 0.5, 0.3, 2.0  # interval [0.2, 0.8]
ALPHA, BETA = 0.5 / D, -0.5 * C / D + 0.5


def params(gamma=GAMMA):
    return (torch.tensor(C, requires_grad=True), torch.tensor(D, requires_grad=True),
            torch.tensor(gamma, requires_grad=True))


def test_weight_transform_values_and_gradients_by_hand():
    w_list = [-1.0, -0.3, 0.05, 0.4, 0.9]  # clipped, inside, pruned, inside, clipped
    upstream = [1.0, 2.0, 3.0, 4.0, 5.0]
    w = torch.tensor(w_list, requires_grad=True)
    c, d, gamma = params()
    w_hat = qil_weight_transform(w, c, d, gamma)
    w_hat.backward(torch.tensor(upstream))
    t = {1: ALPHA * 0.3 + BETA, 3: ALPHA * 0.4 + BETA}  # 1/6 and 1/3
    assert w_hat.tolist() == pytest.approx([-1.0, -t[1] ** 2, 0.0, t[3] ** 2, 1.0])
    # inside: w_hat = sign(w) t^gamma, t = (|w| - c) / (2d) + 1/2
    sign = {1: -1.0, 3: 1.0}
    dw = [0.0] * 5
    dc = dd = dg = 0.0
    for i in (1, 3):
        slope = GAMMA * t[i] ** (GAMMA - 1)
        dw[i] = upstream[i] * slope * ALPHA  # sign(w) * sign(w) = 1
        dc += upstream[i] * sign[i] * slope * (-0.5 / D)
        dd += upstream[i] * sign[i] * slope * (-(abs(w_list[i]) - C) / (2 * D * D))
        dg += upstream[i] * sign[i] * t[i] ** GAMMA * math.log(t[i])
    assert w.grad.tolist() == pytest.approx(dw, rel=1e-5)
    assert float(c.grad) == pytest.approx(dc, rel=1e-5)
    assert float(d.grad) == pytest.approx(dd, rel=1e-5)
    assert float(gamma.grad) == pytest.approx(dg, rel=1e-5)  # finite although 0^gamma appears (pruned w)


def test_act_transform_values_and_gradients_by_hand():
    x = torch.tensor([-0.5, 0.1, 0.5, 0.7, 2.0], requires_grad=True)
    c, d, _ = params()
    a_hat = qil_act_transform(x, c, d)
    a_hat.backward(torch.ones(5))
    assert a_hat.tolist() == pytest.approx([0.0, 0.0, 0.5, ALPHA * 0.7 + BETA, 1.0])
    assert x.grad.tolist() == pytest.approx([0.0, 0.0, ALPHA, ALPHA, 0.0])
    assert float(c.grad) == pytest.approx(2 * (-0.5 / D))
    assert float(d.grad) == pytest.approx(-(0.5 - C) / (2 * D * D) - (0.7 - C) / (2 * D * D))


def test_discretizer_levels_and_ste():
    x_hat = torch.tensor([-1.0, -0.4, 0.1, 0.5, 0.9], requires_grad=True)
    out = qil_discretize(x_hat, 3)  # 3-bit weights: q_D = 2^2 - 1 = 3, levels k/3
    out.backward(torch.ones(5))
    assert out.tolist() == pytest.approx([-1.0, -1 / 3, 0.0, 2 / 3, 1.0])
    assert x_hat.grad.tolist() == [1.0] * 5
    assert QILQuantizer(3, "weight").levels == 3 and QILQuantizer(3, "act").levels == 7


def test_quantizer_lazy_init_output_scale_and_grid():
    w = torch.tensor([-0.6, -0.1, 0.2, 0.45])
    q = QILQuantizer(3, "weight")
    out = q(w)
    assert float(q.c.detach()) == pytest.approx(0.3) and float(q.d.detach()) == pytest.approx(0.3)
    # interval [0, 0.6] maps |w| linearly to [0, 1] (gamma = 1), then rounds to thirds
    assert out.tolist() == pytest.approx([-1.0, 0.0, 1 / 3, 2 / 3])
    scaled = QILQuantizer(3, "weight", output_scale="interval")(w)
    assert scaled.tolist() == pytest.approx([v * 0.6 for v in out.tolist()])
    a = QILQuantizer(2, "act", init_c=1.0, init_d=1.0)  # interval [0, 2], 3 steps
    assert a(torch.tensor([-1.0, 0.5, 1.4, 3.0])).tolist() == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])


def test_bad_inputs():
    with pytest.raises(BitWidthError):
        QILQuantizer(1, "weight")
    with pytest.raises(BitWidthError):
        QILQuantizer(17, "act")
    with pytest.raises(QuantParamError):
        QILQuantizer(4, "act", init_c=0.5, init_d=0.0)
    with pytest.raises(QuantParamError):
        QILQuantizer(4, "act", init_c=-0.5, init_d=0.3)
    with pytest.raises(QuantParamError):
        QILQuantizer(4, "act", init_c=0.5)
    with pytest.raises(QuantParamError):
        QILQuantizer(4, "weight", init_gamma=0.0)
    with pytest.raises(TensorValueError):
        QILQuantizer(4, "act")(torch.empty(0))
    with pytest.raises(TensorValueError):
        QILQuantizer(4, "act")(torch.tensor([1.0, float("inf")]))
    q = QILQuantizer(4, "act", init_c=1.0, init_d=0.5)
    with torch.no_grad():
        q.d.fill_(-0.01)
    with pytest.raises(QuantParamError, match="-0.01"):
        q(torch.ones(2))


def test_progressive_schedule_and_set_bits():
    assert progressive_schedule() == [5, 4, 3, 2]
    assert progressive_schedule(8, 8) == [8]
    with pytest.raises(BitWidthError):
        progressive_schedule(2, 5)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4, 3))
    qmodel = quantize_model(model, uniform_policy(model, 5, 5, first_last_bits=8),
                            weight_quantizer=qil_weight_quantizer, act_quantizer=qil_act_quantizer)
    for bits in progressive_schedule():
        assert set_bits(qmodel, bits, exclude=("0", "5")) == 2
        qmodel(torch.rand(2, 1, 5, 5)).sum().backward()
    assert qmodel[2].w_quantizer.bits == 2 and qmodel[0].w_quantizer.bits == 8 and qmodel[5].a_quantizer.bits == 8
    assert qmodel[2].w_quantizer.gamma.grad is not None
    with pytest.raises(PolicyError):
        set_bits(qmodel, 4, exclude=("conv9",))


@pytest.mark.parametrize("role", ["weight", "act"])
def test_gradients_stay_finite_for_values_near_1e30(role):
    # alpha * |w| made the gradient of alpha (upstream * |w|, both ~1e30) overflow: d's gradient was NaN
    torch.manual_seed(0)
    x = (torch.randn(2, 8) * 1e30).requires_grad_()
    q = QILQuantizer(4, role, output_scale="interval")
    q(x).backward(torch.linspace(-1, 1, 16).reshape(2, 8))
    grads = [x.grad, q.c.grad, q.d.grad] + ([q.gamma.grad] if role == "weight" else [])
    assert all(bool(torch.isfinite(g).all()) for g in grads)
