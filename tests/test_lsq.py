"""LSQ and LSQ+: formulas, hand-computed gradients, PyTorch's learnable fake-quantize, lazy init, bit options."""

import math

import pytest
import torch
from torch import nn

from mpqlab.errors import BitWidthError, QuantParamError, TensorValueError
from mpqlab.quant.lsq import (
    LSQQuantizer, check_finite_grads, lsq_act_quantizer, lsq_init_step, lsq_quantize, lsq_quantize_autograd,
    lsq_range, lsq_weight_quantizer,
)
from mpqlab.quant.lsq_plus import (
    LSQPlusQuantizer, lsq_plus_minmax_init, lsq_plus_mse_init, lsq_plus_weight_init,
)
from mpqlab.quant.policy import quantize_model, uniform_policy

X = [-3.0, -0.2, 0.26, 0.74, 1.3, 5.0]  # with s = 0.5: v = x/s = [-6, -0.4, 0.52, 1.48, 2.6, 10]
G = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]       # upstream gradient, distinct so every term is visible


def run(x, s, q_min, q_max, g=1.0, grad=G):
    x = torch.tensor(x, requires_grad=True)
    s = torch.tensor(s, requires_grad=True)
    y = lsq_quantize(x, s, q_min, q_max, g)
    y.backward(torch.tensor(grad))
    return y.detach(), x.grad, s.grad


def test_range():
    assert lsq_range(4, signed=True) == (-8, 7)
    assert lsq_range(4, signed=False) == (0, 15)
    assert lsq_range(2, signed=True) == (-2, 1)


def test_unsigned_values_and_gradients_by_hand():
    y, gx, gs = run(X, 0.5, 0, 3)
    # v_bar = round(clip(v, 0, 3)) = [0, 0, 1, 1, 3, 3]
    assert y.tolist() == pytest.approx([0.0, 0.0, 0.5, 0.5, 1.5, 1.5])
    # STE: 1 strictly inside 0 < v < 3
    assert gx.tolist() == [0.0, 0.0, 3.0, 4.0, 5.0, 0.0]
    # ds terms: -Q_N = 0 below, round(v) - v inside (0.48, -0.48, 0.4), Q_P = 3 above
    assert float(gs) == pytest.approx(0.48 * 3 - 0.48 * 4 + 0.4 * 5 + 3 * 6, abs=1e-5)


def test_signed_gradients_and_grad_factor_by_hand():
    _, gx, gs = run(X, 0.5, -2, 1, grad=[1.0] * 6)
    assert gx.tolist() == [0.0, 1.0, 1.0, 0.0, 0.0, 0.0]  # inside -2 < v < 1
    # -Q_N = -2 for v = -6; round(v) - v = 0.4 and 0.48 for v = -0.4, 0.52; Q_P = 1 for v = 1.48, 2.6, 10
    assert float(gs) == pytest.approx(1.88, abs=1e-5)
    _, _, gs_scaled = run(X, 0.5, -2, 1, g=0.25, grad=[1.0] * 6)
    assert float(gs_scaled) == pytest.approx(0.25 * 1.88, abs=1e-5)


def test_boundary_follows_the_paper():
    # v/s exactly Q_P counts as clipped: dv_hat/dv = 0 and dv_hat/ds = Q_P
    _, gx, gs = run([1.5], 0.5, 0, 3, grad=[1.0])
    assert gx.tolist() == [0.0] and float(gs) == 3.0
    # v = x/s overflows to +-inf: still clipped, never NaN
    y, gx, gs = run([3e38, -3e38], 0.5, 0, 3, grad=[1.0, 1.0])
    assert y.tolist() == [1.5, 0.0] and gx.tolist() == [0.0, 0.0] and float(gs) == 3.0


def test_matches_autograd_reference():
    torch.manual_seed(0)
    x1 = torch.randn(2000, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    s1, s2 = torch.tensor(0.3, requires_grad=True), torch.tensor(0.3, requires_grad=True)
    grad = torch.randn(2000)
    lsq_quantize(x1, s1, -8, 7, 0.01).backward(grad)
    lsq_quantize_autograd(x2, s2, -8, 7, 0.01).backward(grad)
    # autograd's x gradient is (grad * s) / s, equal to ours up to float rounding
    assert torch.equal(x1.grad == 0, x2.grad == 0)
    assert torch.allclose(x1.grad, x2.grad, rtol=1e-6, atol=0)
    assert torch.allclose(s1.grad, s2.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("q_min,q_max,grad_factor", [(-8, 7, 1.0), (0, 15, 0.05), (-2, 1, 0.5)])
def test_matches_pytorch_learnable_fake_quantize(q_min, q_max, grad_factor):
    torch.manual_seed(1)
    s = 0.25
    x = torch.randn(5000) * 2
    v = x / s
    # PyTorch rounds before clipping, so it treats the half step just outside the range as inside;
    # the paper clips first. Compare away from those two bands.
    keep = ~(((v > q_min - 0.5) & (v <= q_min)) | ((v >= q_max) & (v < q_max + 0.5)))
    x = x[keep]
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    s1, s2 = torch.tensor(s, requires_grad=True), torch.tensor([s], requires_grad=True)
    zp = torch.tensor([0.0], requires_grad=True)
    grad = torch.randn(x.numel())
    y1 = lsq_quantize(x1, s1, q_min, q_max, grad_factor)
    y2 = torch._fake_quantize_learnable_per_tensor_affine(x2, s2, zp, q_min, q_max, grad_factor)
    y1.backward(grad)
    y2.backward(grad)
    assert torch.allclose(y1, y2, atol=1e-6)
    assert torch.equal(x1.grad, x2.grad)
    assert float(s1.grad) == pytest.approx(float(s2.grad), rel=1e-4)


def test_band_where_pytorch_differs():
    # v = Q_P + 0.3 rounds to Q_P: PyTorch passes the gradient to x, the paper (and we) do not
    x1 = torch.tensor([3.3], requires_grad=True)
    x2 = torch.tensor([3.3], requires_grad=True)
    lsq_quantize(x1, torch.tensor(1.0), 0, 3).backward(torch.ones(1))
    torch._fake_quantize_learnable_per_tensor_affine(
        x2, torch.tensor([1.0]), torch.tensor([0.0]), 0, 3, 1.0).backward(torch.ones(1))
    assert float(x1.grad) == 0.0 and float(x2.grad) == 1.0


def test_gradient_scale_uses_weights_or_features_per_sample():
    torch.manual_seed(0)
    w = torch.randn(4, 3, 3, 3)
    q = LSQQuantizer(4, "weight")
    q(w).sum().backward()
    s = q.step.detach()
    ref = torch.tensor(float(s), requires_grad=True)
    lsq_quantize(w, ref, -8, 7).sum().backward()
    assert float(q.step.grad) == pytest.approx(float(ref.grad) / math.sqrt(w.numel() * 7), rel=1e-5)

    a = torch.rand(5, 2, 4, 4) * 3  # N_F = 2 * 4 * 4 features per sample, not 5 * 32
    qa = LSQQuantizer(3, "act")
    qa(a).sum().backward()
    ref = torch.tensor(float(qa.step.detach()), requires_grad=True)
    lsq_quantize(a, ref, 0, 7).sum().backward()
    assert float(qa.step.grad) == pytest.approx(float(ref.grad) / math.sqrt(32 * 7), rel=1e-5)

    q_off = LSQQuantizer(4, "weight", grad_scale=False)
    q_off(w).sum().backward()
    ref = torch.tensor(float(q_off.step.detach()), requires_grad=True)
    lsq_quantize(w, ref, -8, 7).sum().backward()
    assert float(q_off.step.grad) == pytest.approx(float(ref.grad), rel=1e-6)


def test_lazy_initialisation():
    q = LSQQuantizer(4, "act")
    assert not bool(q.initialized[0])
    q(torch.zeros(2, 3))  # an all-zero batch does not fix the step
    assert not bool(q.initialized[0])
    x = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.5, 1.5]])
    q(x)
    assert float(q.step.detach()) == pytest.approx(2 * 8.0 / 6 / math.sqrt(15))
    assert lsq_init_step(x, 15) == pytest.approx(float(q.step.detach()))
    q(x * 100)  # later batches do not re-initialise
    assert float(q.step.detach()) == pytest.approx(2 * 8.0 / 6 / math.sqrt(15))
    q.load_state_dict(LSQQuantizer(4, "act").state_dict())  # an uninitialised state: initialise again
    q(x * 100)
    assert float(q.step.detach()) == pytest.approx(200 * 8.0 / 6 / math.sqrt(15))


def test_bit_options_have_their_own_lazily_initialised_steps():
    torch.manual_seed(0)
    w = torch.randn(50)
    q = LSQQuantizer(4, "weight", bit_options=[2, 3, 4, 5, 6])
    q(w).sum().backward()
    sizes = q.step_sizes()
    assert list(sizes) == [2, 3, 4, 5, 6]
    assert sizes[4] == pytest.approx(lsq_init_step(w, 7))
    assert all(math.isnan(sizes[b]) for b in (2, 3, 5, 6))
    assert q.steps["4"].grad is not None and q.steps["2"].grad is None
    q.bits = 2
    q(w)
    assert q.step_sizes()[2] == pytest.approx(lsq_init_step(w, 1))
    assert q.step_sizes()[4] == pytest.approx(sizes[4])  # untouched
    with pytest.raises(BitWidthError, match="bits=8"):
        q.bits = 8
    assert q.bits == 2  # a refused change leaves the quantizer as it was
    fresh = LSQQuantizer(2, "weight", bit_options=[2, 3, 4, 5, 6])
    fresh.load_state_dict(q.state_dict())
    assert fresh.step_sizes()[2] == pytest.approx(q.step_sizes()[2]) and math.isnan(fresh.step_sizes()[3])


def test_bad_inputs():
    with pytest.raises(BitWidthError):
        LSQQuantizer(0, "act")
    with pytest.raises(BitWidthError):
        LSQQuantizer(1, "weight")  # signed 1-bit has no positive level
    with pytest.raises(BitWidthError):
        LSQQuantizer(4, "weight", bit_options=[1, 4])
    with pytest.raises(BitWidthError):
        LSQQuantizer(4, "act").bits = 17
    with pytest.raises(QuantParamError):
        LSQQuantizer(4, "act", init_step=0.0)
    with pytest.raises(QuantParamError):
        LSQQuantizer(4, "act", init_step=-1.0)
    with pytest.raises(TensorValueError, match="empty"):
        LSQQuantizer(4, "act")(torch.empty(0, 3))
    with pytest.raises(TensorValueError, match="NaN"):
        LSQQuantizer(4, "act")(torch.tensor([1.0, float("nan")]))
    q = LSQQuantizer(4, "act", init_step=0.5)
    with torch.no_grad():
        q.step.fill_(-0.02)  # what a too-large learning rate can do
    with pytest.raises(QuantParamError, match="-0.02"):
        q(torch.ones(3))
    q = LSQQuantizer(4, "act", init_step=0.5)
    x = torch.tensor([1.0, float("nan")], requires_grad=True)
    with pytest.raises(TensorValueError, match="1 NaN and 0 Inf"):  # refused before it reaches the step
        q(x)
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(TensorValueError, match="NaN/Inf"):  # a NaN arriving from the loss, in backward
        q(x).backward(torch.tensor([1.0, float("nan")]))


def test_check_finite_grads_names_the_parameter():
    model = nn.Linear(2, 2)
    model(torch.ones(1, 2)).sum().backward()
    check_finite_grads(model)  # all finite: no error
    model.bias.grad[0] = float("nan")
    with pytest.raises(TensorValueError, match="bias"):
        check_finite_grads(model)


def test_factories_plug_into_quantize_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    qmodel = quantize_model(model, uniform_policy(model, 4, 4), weight_quantizer=lsq_weight_quantizer,
                            act_quantizer=lsq_act_quantizer)
    qmodel(torch.rand(2, 1, 6, 6)).sum().backward()
    steps = [p for name, p in qmodel.named_parameters() if "steps" in name]
    assert len(steps) == 4 and all(p.grad is not None and p.grad.abs() > 0 for p in steps)


# ---- LSQ+ ------------------------------------------------------------------------------------------

def test_lsq_plus_offset_values_and_gradients_by_hand():
    x = torch.tensor([-0.9, -0.3, 0.2, 1.1, 3.0], requires_grad=True)
    s = torch.tensor(0.5, requires_grad=True)
    beta = torch.tensor(-0.5, requires_grad=True)
    y = lsq_quantize(x, s, 0, 3, offset=beta)  # v = (x - beta)/s = [-0.8, 0.4, 1.4, 3.2, 7]
    y.backward(torch.ones(5))
    assert y.tolist() == pytest.approx([-0.5, -0.5, 0.0, 1.0, 1.0])
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0, 0.0]
    assert float(s.grad) == pytest.approx(0 - 0.4 - 0.4 + 3 + 3, abs=1e-5)
    assert float(beta.grad) == 3.0  # one per element outside the range


def test_lsq_plus_inits():
    x = torch.tensor([-0.3, 0.0, 0.9, 2.7])
    s, beta = lsq_plus_minmax_init(x, 0, 3)
    assert (s, beta) == pytest.approx((1.0, -0.3))
    w = torch.tensor([0.1, -0.2, 0.3, 0.0])
    mu, sigma = 0.05, math.sqrt(((0.05**2) + 0.25**2 + 0.25**2 + 0.05**2) / 4)
    assert lsq_plus_weight_init(w, 4) == pytest.approx(max(abs(mu - 3 * sigma), abs(mu + 3 * sigma)) / 8)
    torch.manual_seed(0)
    a = torch.relu(torch.randn(10000)) ** 2  # long tail: MSE init should clip it
    s_mse, b_mse = lsq_plus_mse_init(a, 0, 15)
    s_mm, b_mm = lsq_plus_minmax_init(a, 0, 15)

    def err(s, b):
        return float(((torch.clamp(torch.round((a - b) / s), 0, 15) * s + b - a) ** 2).sum())
    assert s_mse < s_mm and err(s_mse, b_mse) < err(s_mm, b_mm)


def test_lsq_plus_quantizer_learns_offset_and_reinitialises_on_new_bits():
    x = torch.tensor([[-0.3, 0.0, 0.9, 2.7]])
    q = LSQPlusQuantizer(2, "act")
    q(x).sum().backward()
    assert float(q.step.detach()) == pytest.approx(1.0) and float(q.offset.detach()) == pytest.approx(-0.3)
    assert q.offset.grad is not None
    q.bits = 3
    q(x)
    assert float(q.step.detach()) == pytest.approx(3.0 / 7)
    qw = LSQPlusQuantizer(4, "weight")
    assert qw.offset is None
    with pytest.raises(BitWidthError):
        LSQPlusQuantizer(1, "weight")
    with pytest.raises(TensorValueError):
        LSQPlusQuantizer(4, "act")(torch.empty(0))
    with torch.no_grad():
        q.step.fill_(0.0)
    with pytest.raises(QuantParamError):
        q(x)


@pytest.mark.parametrize("with_offset", [False, True])
def test_fast_function_matches_the_plain_formulas_bit_for_bit(with_offset):
    # the formulas written the obvious way (a float STE mask, as the code did before it was made faster):
    # the faster autograd.Function must give exactly these values, so shipped results reproduce bit for bit
    torch.manual_seed(3)
    x, grad = torch.randn(20000) * 3, torch.randn(20000)
    offset = torch.tensor(-0.2) if with_offset else torch.tensor(0.0)
    s, q_min, q_max, g = torch.tensor(0.37), -8, 7, 0.01
    v = (x - offset) / s
    inside = ((v > q_min) & (v < q_max)).float()
    v_clip = v.clamp(q_min, q_max)
    v_bar = torch.round(v_clip)
    expected_y = v_bar * s + offset if with_offset else v_bar * s
    expected_gx = grad * inside
    expected_gs = (torch.dot(grad, v_bar) - torch.dot(expected_gx, v_clip)) * g

    xx, ss = x.clone().requires_grad_(True), s.clone().requires_grad_(True)
    oo = offset.clone().requires_grad_(True) if with_offset else None
    y = lsq_quantize(xx, ss, q_min, q_max, g, offset=oo)
    y.backward(grad)
    assert torch.equal(y.detach(), expected_y) and torch.equal(xx.grad, expected_gx)
    assert float(ss.grad) == float(expected_gs)
    if with_offset:
        assert float(oo.grad) == float((grad.sum() - expected_gx.sum()) * g)


@pytest.mark.parametrize("method", ["lsq", "lsq_plus"])
def test_torch_compile_traces_the_quantizer_and_matches_eager(method):
    # "aot_eager" runs the same tracing and autograd graph capture as the default backend without needing a
    # C++ compiler; fullgraph=True fails on any graph break (e.g. reading a tensor to decide whether to
    # initialise); the value checks skip themselves while tracing (see check_step)
    from mpqlab.qat import build_qat_model

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 2 * 2, 3))
    qmodel = build_qat_model(model, method, 4).train()
    x = torch.rand(4, 1, 6, 6)
    qmodel(x)  # lazy initialisation happens eagerly, once
    eager_out = qmodel(x)
    eager_out.sum().backward()
    eager_grads = {n: p.grad.clone() for n, p in qmodel.named_parameters()}
    qmodel.zero_grad()
    compiled = torch.compile(qmodel, backend="aot_eager", fullgraph=True)
    out = compiled(x)
    out.sum().backward()
    assert torch.allclose(out, eager_out, atol=1e-6)
    for name, p in qmodel.named_parameters():
        assert torch.allclose(p.grad, eager_grads[name], rtol=1e-4, atol=1e-6), name


def test_lsq_plus_initialises_again_after_loading_an_uninitialised_state_or_new_bits():
    fresh_state = LSQPlusQuantizer(4, "act").state_dict()
    q = LSQPlusQuantizer(4, "act")
    q(torch.tensor([0.0, 1.0, 3.0]))
    assert float(q.step.detach()) == pytest.approx(3.0 / 15)
    q.load_state_dict(fresh_state)  # says "not initialised": the next input sets the range again
    q(torch.tensor([0.0, 1.5]))
    assert float(q.step.detach()) == pytest.approx(1.5 / 15)
    q.bits = 2
    q(torch.tensor([0.0, 3.0]))
    assert float(q.step.detach()) == pytest.approx(3.0 / 3)


@pytest.mark.parametrize("value", [2.0, -1.5])
@pytest.mark.parametrize("init", ["minmax", "mse"])
def test_lsq_plus_initialises_on_a_constant_tensor(value, init):
    # a constant has max = min: the step used to stay at its placeholder for ever; its range is widened to 0
    q = LSQPlusQuantizer(4, "act", init=init)
    x = torch.full((5,), value)
    out = q(x)
    assert bool(q.initialized) and math.isfinite(float(q.step.detach())) and float(q.step.detach()) > 0
    assert float(q.step.detach()) == pytest.approx(abs(value) / 15)
    assert torch.allclose(out, x)  # the constant sits on an end of the grid


def test_lsq_plus_waits_on_an_all_zero_tensor():
    q = LSQPlusQuantizer(4, "act")
    assert torch.equal(q(torch.zeros(4)), torch.zeros(4)) and not bool(q.initialized)
    q(torch.tensor([0.0, 3.0]))
    assert float(q.step.detach()) == pytest.approx(3.0 / 15)


@pytest.mark.parametrize("factor", [1e30, 1e-30])
def test_lsq_plus_mse_init_is_scale_equivariant(factor):
    # squared errors overflowed (step 0: never initialised) or underflowed (every candidate looked perfect)
    a = torch.relu(torch.randn(1000, generator=torch.Generator().manual_seed(0))) ** 2
    s, beta = lsq_plus_mse_init(a * factor, 0, 15)
    s_ref, beta_ref = lsq_plus_mse_init(a, 0, 15)
    assert s / factor == pytest.approx(s_ref, rel=1e-5) and beta == beta_ref == 0.0


@pytest.mark.parametrize("make", [lambda: LSQQuantizer(4, "act", init_step=0.5), lambda: LSQPlusQuantizer(4, "act")],
                         ids=["lsq", "lsq+"])
def test_nan_and_inf_are_refused_once_initialised(make):
    q = make()
    q(torch.tensor([0.0, 1.0, 3.0]))
    state = {k: v.clone() for k, v in q.state_dict().items()}
    with pytest.raises(TensorValueError, match="2 NaN and 1 Inf"):
        q(torch.tensor([float("nan"), 1.0, float("inf"), float("nan")]))
    with pytest.raises(TensorValueError, match="convert it with x.float"):
        q(torch.tensor([1, 2]))
    assert all(torch.equal(v, q.state_dict()[k]) for k, v in state.items())
