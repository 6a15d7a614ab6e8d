"""Every public quantizer and observer in ``mpqlab.quant`` against one catalogue of awkward inputs.

The property (issue #12, section 3): for each input, a quantizer returns a finite tensor of the input's
shape and dtype (with finite gradients when the input requires them), or raises an ``MpqlabError``;
never another exception type, never NaN. After an ``MpqlabError`` its state (running statistics,
initialised flags, learned parameters) is what it was before the call. The input policy itself is in
``mpqlab/quant/quantizer.py``.

To cover a new quantizer, add one line to ``QUANTIZERS`` (or ``OBSERVERS``).
``FullPrecision`` is left out on purpose: it is the identity and checks nothing (see its docstring).
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpqlab.errors import MpqlabError, TensorValueError
from mpqlab.quant.binary import BinaryActQuantizer, BinaryWeightQuantizer
from mpqlab.quant.hswish_shift import ShiftedActQuantizer
from mpqlab.quant.kl import KLObserver
from mpqlab.quant.log import LogQuantizer, log_act_quantizer, log_weight_quantizer
from mpqlab.quant.lsq import lsq_act_quantizer, lsq_weight_quantizer
from mpqlab.quant.lsq_plus import LSQPlusQuantizer, lsq_plus_act_quantizer, lsq_plus_weight_quantizer
from mpqlab.quant.observers import (
    EMAMinMaxObserver, MinMaxObserver, MSEObserver, PercentileObserver, SampleObserver,
)
from mpqlab.quant.outlier import outlier_act_quantizer, outlier_weight_quantizer
from mpqlab.quant.pact import DoReFaWeightQuantizer, pact_act_quantizer
from mpqlab.quant.qil import QILQuantizer, qil_act_quantizer, qil_weight_quantizer
from mpqlab.quant.uniform import UniformQuantizer, default_act_quantizer, default_weight_quantizer
from mpqlab.quant.weighted_entropy import we_act_quantizer, we_weight_quantizer

WEIGHT_SHAPE = (4, 3, 3, 3)  # (C_out, C_in, k, k), a conv weight
ACT_SHAPE = (2, 3, 4, 5)  # (N, C, H, W), an activation

# name -> (factory making a fresh quantizer, the shape of tensor it quantizes)
QUANTIZERS = {
    "uniform weight (per-channel min-max)": (lambda: default_weight_quantizer(4, "", None), WEIGHT_SHAPE),
    "uniform act (EMA, static)": (lambda: default_act_quantizer(4, "", None), ACT_SHAPE),
    "uniform minmax dynamic": (lambda: UniformQuantizer(MinMaxObserver(8)), ACT_SHAPE),
    "uniform percentile": (lambda: UniformQuantizer(PercentileObserver(4), mode="static"), ACT_SHAPE),
    "uniform mse": (lambda: UniformQuantizer(MSEObserver(4, num_candidates=20), mode="static"), ACT_SHAPE),
    "uniform kl": (lambda: UniformQuantizer(KLObserver(4, num_bins=256), mode="static"), ACT_SHAPE),
    "log weight": (lambda: log_weight_quantizer(4), WEIGHT_SHAPE),
    "log act (running max)": (lambda: log_act_quantizer(4), ACT_SHAPE),
    "log fixed fsr": (lambda: LogQuantizer(3, signed=False, base="sqrt2", fsr=2), ACT_SHAPE),
    "lsq weight": (lambda: lsq_weight_quantizer(4), WEIGHT_SHAPE),
    "lsq act": (lambda: lsq_act_quantizer(4), ACT_SHAPE),
    "lsq+ weight": (lambda: lsq_plus_weight_quantizer(4), WEIGHT_SHAPE),
    "lsq+ act (min-max init)": (lambda: lsq_plus_act_quantizer(4), ACT_SHAPE),
    "lsq+ act (mse init)": (lambda: LSQPlusQuantizer(4, "act", init="mse"), ACT_SHAPE),
    "pact": (lambda: pact_act_quantizer(4), ACT_SHAPE),
    "dorefa (max_abs)": (lambda: DoReFaWeightQuantizer(4), WEIGHT_SHAPE),
    "dorefa (normalized)": (lambda: DoReFaWeightQuantizer(2, output_scale="normalized"), WEIGHT_SHAPE),
    "qil weight": (lambda: qil_weight_quantizer(4), WEIGHT_SHAPE),
    "qil act": (lambda: qil_act_quantizer(4), ACT_SHAPE),
    "qil act (normalized)": (lambda: QILQuantizer(2, "act"), ACT_SHAPE),
    "binary weight": (BinaryWeightQuantizer, WEIGHT_SHAPE),
    "binary act": (BinaryActQuantizer, ACT_SHAPE),
    "hswish shifted": (lambda: ShiftedActQuantizer(4), ACT_SHAPE),
    "outlier weight": (lambda: outlier_weight_quantizer(4), WEIGHT_SHAPE),
    "outlier act (running threshold)": (lambda: outlier_act_quantizer(4), ACT_SHAPE),
    "weighted-entropy weight": (lambda: we_weight_quantizer(3), WEIGHT_SHAPE),
    "weighted-entropy act": (lambda: we_act_quantizer(3), ACT_SHAPE),
}

OBSERVERS = {
    "minmax": lambda: MinMaxObserver(8),
    "minmax per-channel": lambda: MinMaxObserver(4, symmetric=True, signed=True, ch_axis=0),
    "ema": lambda: EMAMinMaxObserver(8),
    "sample": lambda: SampleObserver(8, max_samples=50),
    "percentile": lambda: PercentileObserver(8),
    "mse": lambda: MSEObserver(8, num_candidates=20),
    "mse per-channel": lambda: MSEObserver(4, symmetric=True, signed=True, ch_axis=0, num_candidates=20),
    "kl": lambda: KLObserver(8, num_bins=256),
}


def _normal(shape) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def _with(shape, value) -> torch.Tensor:
    x = _normal(shape)
    x.view(-1)[3] = value
    return x


# name -> function of the shape making the input
INPUTS = {
    "normal": _normal,
    "empty": lambda shape: torch.empty(0, *shape[1:]),
    "constant": lambda shape: torch.full(shape, 0.7),
    "negative constant": lambda shape: torch.full(shape, -0.7),
    "all zero": torch.zeros,
    "nan": lambda shape: _with(shape, float("nan")),
    "all nan": lambda shape: torch.full(shape, float("nan")),
    "inf": lambda shape: _with(shape, float("inf")),
    "-inf": lambda shape: _with(shape, float("-inf")),
    "huge": lambda shape: _normal(shape) * 1e30,
    "tiny": lambda shape: _normal(shape) * 1e-30,
    "float64": lambda shape: _normal(shape).double(),
    "float16": lambda shape: _normal(shape).half(),
    "float16 small": lambda shape: (_normal(shape) * 1e-4).half(),  # 1 / scale overflows float16
    "bfloat16": lambda shape: _normal(shape).bfloat16(),
    "bfloat16 huge": lambda shape: (_normal(shape) * 1e30).bfloat16(),
    "integer": lambda shape: torch.randint(-7, 20, shape, generator=torch.Generator().manual_seed(0)),
    "bool": lambda shape: _normal(shape) > 0,
    "non-contiguous": lambda shape: _normal(shape).transpose(-1, -2),
    "requires_grad": lambda shape: _normal(shape).requires_grad_(),
    "requires_grad huge": lambda shape: (_normal(shape) * 1e30).requires_grad_(),
}


def snapshot(module: torch.nn.Module) -> list:
    """Everything a call may change: parameters, buffers (persistent or not) and plain Python attributes."""
    state = []
    for name, m in module.named_modules():
        state += [(name, k, None if t is None else t.detach().clone()) for k, t in m._parameters.items()]
        state += [(name, k, None if t is None else t.detach().clone()) for k, t in m._buffers.items()]
        for k, v in vars(m).items():
            if isinstance(v, (bool, int, float, str, type(None), set, tuple)):
                state.append((name, k, copy.copy(v)))
            elif isinstance(v, list):
                state.append((name, k, len(v)))
    return state


def assert_same_state(before: list, after: list) -> None:
    assert len(before) == len(after)
    for (name, key, old), (_, _, new) in zip(before, after):
        if isinstance(old, torch.Tensor):
            assert isinstance(new, torch.Tensor) and old.shape == new.shape, (name, key)
            assert torch.equal(old, new) or (old.isnan() & new.isnan()).all(), (name, key)
        else:
            assert old == new, (name, key, old, new)


def check_quantizer(q: torch.nn.Module, x: torch.Tensor) -> None:
    """The property: a finite tensor like ``x`` (finite gradients too), or an MpqlabError leaving ``q`` as it was."""
    before = snapshot(q)
    try:
        out = q(x)
    except MpqlabError:
        assert_same_state(before, snapshot(q))
        return
    assert isinstance(out, torch.Tensor) and out.shape == x.shape and out.dtype == x.dtype
    assert bool(torch.isfinite(out).all()), out
    if x.requires_grad:
        out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape).to(out.dtype))  # varied, of size 1
        grads = {"x": x.grad} | {name: p.grad for name, p in q.named_parameters() if p.grad is not None}
        assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads.values()), grads


@pytest.mark.parametrize("initialised", [False, True], ids=["fresh", "after one batch"])
@pytest.mark.parametrize("input_name", list(INPUTS))
@pytest.mark.parametrize("quantizer_name", list(QUANTIZERS))
def test_quantizer_gives_finite_output_or_mpqlab_error(quantizer_name, input_name, initialised):
    factory, shape = QUANTIZERS[quantizer_name]
    q = factory()
    if initialised:
        q(_normal(shape).abs() + 0.1)  # learned steps, running statistics, signedness are now set
    check_quantizer(q, INPUTS[input_name](shape))


@pytest.mark.parametrize("input_name", list(INPUTS))
@pytest.mark.parametrize("observer_name", list(OBSERVERS))
def test_observer_gives_valid_qparams_or_mpqlab_error(observer_name, input_name):
    ob = OBSERVERS[observer_name]()
    x = INPUTS[input_name](WEIGHT_SHAPE)
    ob(_normal(WEIGHT_SHAPE))
    before = snapshot(ob)
    try:
        assert ob(x) is x  # observers only watch
    except MpqlabError:
        assert_same_state(before, snapshot(ob))
    try:
        scale, zero_point = ob.compute_qparams()
    except MpqlabError:
        return
    assert bool(torch.isfinite(scale).all()) and bool((scale > 0).all())
    assert bool(((zero_point >= ob.q_min) & (zero_point <= ob.q_max)).all())


@pytest.mark.parametrize("quantizer_name", list(QUANTIZERS))
def test_int_and_bool_inputs_are_refused_with_the_conversion_to_use(quantizer_name):
    factory, shape = QUANTIZERS[quantizer_name]
    for x in (INPUTS["integer"](shape), INPUTS["bool"](shape)):
        with pytest.raises(TensorValueError, match=r"floating-point.*x\.float\(\)"):
            factory()(x)


@pytest.mark.parametrize("quantizer_name", list(QUANTIZERS))
def test_nan_and_inf_are_refused_with_their_counts(quantizer_name):
    factory, shape = QUANTIZERS[quantizer_name]
    q = factory()
    q(_normal(shape).abs() + 0.1)
    x = _normal(shape)
    x.view(-1)[:3] = float("nan")
    x.view(-1)[5] = float("-inf")
    with pytest.raises(TensorValueError, match="3 NaN and 1 Inf"):
        q(x)


@pytest.mark.parametrize("quantizer_name", list(QUANTIZERS))
def test_low_precision_is_computed_in_float32_and_returned_in_its_dtype(quantizer_name):
    factory, shape = QUANTIZERS[quantizer_name]
    x = _normal(shape) * 1e-4  # a float16 scale below 1.5e-5 has 1 / scale > 65504, the float16 max
    for dtype in (torch.float16, torch.bfloat16):
        q32, q_low = factory(), factory()
        expected = q32(x.to(dtype).float())
        out = q_low(x.to(dtype))
        assert out.dtype == dtype and bool(torch.isfinite(out).all())
        assert torch.equal(out, expected.to(dtype))


# Mixed catalogue drawn at random: finite values of any magnitude, with NaN and Inf sprinkled in.
values = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                   st.sampled_from([0.0, -0.0, 1e30, -1e30, 1e-30, 1e-38]))


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(quantizer_name=st.sampled_from(sorted(QUANTIZERS)), data=st.lists(values, min_size=1, max_size=12),
       initialised=st.booleans())
def test_random_values_give_finite_output_or_mpqlab_error(quantizer_name, data, initialised):
    factory, shape = QUANTIZERS[quantizer_name]
    q = factory()
    if initialised:
        q(_normal(shape).abs() + 0.1)
    x = torch.tensor(data, dtype=torch.float32)
    check_quantizer(q, x.reshape(1, -1) if shape == WEIGHT_SHAPE else x.reshape(1, 1, 1, -1))
