import math

import pytest
import torch
from torch import nn

from mpqlab.errors import BitWidthError, QuantParamError, TensorValueError
from mpqlab.quant.log import (
    LogQuantizer, fsr_from_data, fsr_from_max, log_act_quantizer, log_exponents, log_levels, log_quantize,
    log_weight_quantizer,
)
from mpqlab.quant.policy import quantize_model, uniform_policy


def paper_logquant(x: float, bits: int, fsr: int, signed: bool, s: int) -> float:
    """Scalar reference, written straight from the paper's formula (our reading, see log.py)."""
    m = bits - 1 if signed else bits
    if x == 0 or (x < 0 and not signed):
        return 0.0
    k = round(s * math.log2(abs(x)))
    if k <= fsr - 2**m:
        return 0.0
    k = min(k, fsr - 1)
    return math.copysign(2.0 ** (k / s), x)


@pytest.mark.parametrize("bits,signed", [(1, False), (2, False), (4, False), (2, True), (3, True), (4, True)])
@pytest.mark.parametrize("base,s", [("2", 1), ("sqrt2", 2)])
def test_matches_scalar_reference_and_lies_on_levels(bits, signed, base, s):
    torch.manual_seed(bits)
    x = torch.randn(500, dtype=torch.float64) * 3
    x[:5] = 0.0
    fsr = 2
    got = log_quantize(x, bits, fsr, signed, base)
    ref = torch.tensor([paper_logquant(v, bits, fsr, signed, s) for v in x.tolist()], dtype=torch.float64)
    assert torch.allclose(got, ref, rtol=1e-15, atol=0)  # exp2 vs ** may differ in the last bit of 2^(1/2)
    levels = log_levels(bits, fsr, signed, base)
    assert torch.isin(got, levels).all()


def test_code_count_one_code_spent_on_zero():
    # unsigned: 2^b codes = zero + 2^b - 1 powers of two; signed: +-0 share a value -> 2^b - 1 distinct
    assert log_levels(3, fsr=0).tolist() == [0.0] + [2.0**k for k in range(-7, 0)]
    assert len(log_levels(3, fsr=0, signed=True)) == 2**3 - 1
    sqrt2_levels = torch.tensor([0.5, 2**-0.5, 1.0], dtype=torch.float64)
    assert torch.allclose(log_levels(2, fsr=1, base="sqrt2")[1:], sqrt2_levels)


def test_clip_rule_at_both_ends():
    bits, fsr = 2, 0  # unsigned: exponent -4 = fsr - 2^b is read as zero; -3, -2, -1 kept; above -1 clips
    x = torch.tensor([2.0**-4, 2.0**-3, 2.0**-2, 2.0**-1, 8.0])
    assert log_quantize(x, bits, fsr, signed=False).tolist() == [0.0, 0.125, 0.25, 0.5, 0.5]


def test_rounding_is_in_the_log_domain():
    # 1.45 is above the geometric midpoint sqrt(2) of [1, 2], so it rounds up to 2 (not to 1)
    assert log_quantize(torch.tensor([1.45, 1.40]), bits=4, fsr=4).tolist() == [2.0, 1.0]


def test_fsr_from_data_puts_the_max_on_the_top_code():
    x = torch.tensor([0.1, -0.7, 3.3])
    fsr = fsr_from_data(x)
    assert fsr == 3 and log_levels(4, fsr, signed=True).max() == 4.0
    assert log_quantize(x, 4, fsr).abs().max() == 4.0
    assert fsr_from_max(3.3, base="sqrt2") == round(2 * math.log2(3.3)) + 1


def test_zeros_and_all_zero_tensor():
    assert torch.equal(log_quantize(torch.zeros(3, 4), 3, fsr_from_data(torch.zeros(3))), torch.zeros(3, 4))
    k, zero = log_exponents(torch.tensor([0.0, 1.0]), 3, 1)
    assert zero.tolist() == [True, False] and k[1] == 0


def test_straight_through_gradient():
    x = torch.tensor([0.3, -2.0, 0.0], requires_grad=True)
    log_quantize(x, 3, 2).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("bad,err", [
    (dict(bits=0), BitWidthError), (dict(bits=17), BitWidthError), (dict(bits=1, signed=True), BitWidthError),
    (dict(fsr=1.5), QuantParamError), (dict(base="e"), QuantParamError),
    (dict(x=torch.tensor([])), TensorValueError), (dict(x=torch.tensor([1.0, math.nan])), TensorValueError),
])
def test_bad_inputs(bad, err):
    args = dict(x=torch.ones(3), bits=3, fsr=1, signed=True, base="2") | bad
    with pytest.raises(err):
        log_quantize(**args)


def test_running_max_updates_in_training_only():
    q = LogQuantizer(3, signed=False, momentum=0.5)
    q(torch.tensor([4.0]))
    q(torch.tensor([2.0], dtype=torch.float64))
    assert float(q.running_max) == 3.0
    q.eval()
    q(torch.tensor([100.0]))
    assert float(q.running_max) == 3.0


def test_signed_is_decided_from_the_first_batch():
    q = LogQuantizer(3, signed=None, momentum=0.1)
    assert q(torch.tensor([-1.0, 1.0])).tolist() == [-1.0, 1.0] and q.signed is True
    q1 = LogQuantizer(1, signed=None, momentum=0.1)
    with pytest.raises(BitWidthError):
        q1(torch.tensor([-1.0, 1.0]))


def tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 3))


def test_plugs_into_quantize_model_and_fine_tunes():
    model = tiny_net()
    qmodel = quantize_model(model, uniform_policy(model, 4, 4), weight_quantizer=log_weight_quantizer,
                            act_quantizer=log_act_quantizer)
    conv = qmodel[0]
    w_hat = conv.w_quantizer(conv.weight)
    assert torch.isin(w_hat.double(), log_levels(4, fsr_from_data(conv.weight), signed=True)).all()
    torch.manual_seed(1)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,))
    losses = []
    # 30 steps take the loss down 23-50% (measured); a 10% drop is then certain, whatever the CPU's float sums.
    for _ in range(30):  # plain SGD by hand (torch.optim's first import costs seconds)
        loss = nn.functional.cross_entropy(qmodel(x), y)
        qmodel.zero_grad()
        loss.backward()
        losses.append(loss.item())
        with torch.no_grad():
            for p in qmodel.parameters():
                p -= 0.05 * p.grad
    assert losses[-1] < 0.9 * losses[0]


def test_a_nan_batch_is_refused_before_the_running_max_changes():
    # one NaN used to leave running_max NaN for ever, and signed=None was decided from the bad batch
    q = LogQuantizer(4, signed=None, momentum=0.1)
    q(torch.tensor([0.5, 2.0]))
    state = {k: v.clone() for k, v in q.state_dict().items()}
    for bad in (torch.tensor([1.0, float("nan")]), torch.tensor([-1.0, float("inf")])):
        with pytest.raises(TensorValueError, match="1 NaN and 0 Inf|0 NaN and 1 Inf"):
            q(bad)
    assert all(torch.equal(v, q.state_dict()[k]) for k, v in state.items()) and q.signed is False
    assert q(torch.tensor([1.0])).isfinite().all()


def test_empty_and_integer_tensors_are_refused():
    with pytest.raises(TensorValueError, match="empty"):
        LogQuantizer(4)(torch.empty(0))  # was a raw max() error from torch
    with pytest.raises(TensorValueError, match="int64"):
        LogQuantizer(4)(torch.tensor([1, 2]))
