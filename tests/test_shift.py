import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from mpqlab.errors import QuantParamError, TensorValueError
from mpqlab.quant.log import log_quantize
from mpqlab.quant.shift import (
    bitshift, floor_log2, floor_pow2, from_fixed, pow2_exponents, shift_conv2d, shift_linear, shift_matmul,
    to_binary_string, to_fixed,
)


def test_worked_example_step_by_step():
    w, a = 5.5, 4.5
    assert to_binary_string(w, 1) == "b101.1" and to_binary_string(a, 1) == "b100.1"
    m = to_fixed(w, 1)
    assert int(m) == 11
    k = floor_log2(a)  # truncate a to the power of two below: b100.0
    assert int(k) == 2 and float(floor_pow2(a)) == 4.0 and to_binary_string(floor_pow2(a), 1) == "b100.0"
    product = from_fixed(bitshift(m, k), 1)  # Bitshift(b101.1, 2)
    assert float(product) == 22.0 and to_binary_string(product, 0) == "b10110"
    assert w * a == 24.75 and to_binary_string(w * a, 2) == "b11000.11"
    passed_on = floor_pow2(product)  # the next layer sees a power of two again
    assert float(passed_on) == 16.0 and to_binary_string(passed_on, 0) == "b10000"


def test_binary_strings():
    assert to_binary_string(0, 0) == "b0"
    assert to_binary_string(-2.25, 2) == "-b10.01"
    assert to_binary_string(0.125, 3) == "b0.001"
    with pytest.raises(QuantParamError, match="0.1"):
        to_binary_string(0.1, 4)
    with pytest.raises(QuantParamError):
        to_binary_string(1.0, -1)


def test_floor_log2_is_exact_at_and_near_powers_of_two():
    x = [2.0**k for k in range(-20, 20)] + [math.nextafter(2.0**k, 0) for k in range(-20, 20)] + [3.0, 0.3, 1e6]
    expected = [k for k in range(-20, 20)] + [k - 1 for k in range(-20, 20)] + [1, -2, 19]
    assert floor_log2(torch.tensor(x, dtype=torch.float64)).tolist() == expected
    with pytest.raises(TensorValueError):
        floor_log2(torch.tensor([1.0, 0.0]))


def test_bitshift_left_and_right():
    m = torch.tensor([11, 11, -11, 12])
    k = torch.tensor([2, -1, -1, -2])
    assert bitshift(m, k).tolist() == [44, 5, -6, 3]  # right shifts round toward -inf


def test_pow2_exponents_roundtrip_and_refusal():
    a = torch.tensor([0.0, 0.25, -8.0, 1.0])
    sign, k = pow2_exponents(a)
    assert sign.tolist() == [0, 1, -1, 1] and k.tolist() == [0, -2, 3, 0]
    with pytest.raises(TensorValueError, match="not 0 or"):
        pow2_exponents(torch.tensor([2**0.5]))  # a base-sqrt(2) level


def random_case(seed, n=6, i=40, o=5, frac_bits=4):
    g = torch.Generator().manual_seed(seed)
    a_hat = log_quantize(torch.randn(n, i, generator=g, dtype=torch.float64) * 2, bits=5, fsr=3)  # (N, I)
    w = torch.round(torch.randn(o, i, generator=g, dtype=torch.float64) * 2**frac_bits) / 2**frac_bits  # (O, I)
    return a_hat, w


@pytest.mark.parametrize("seed", range(5))
def test_shift_linear_equals_float_product_exactly(seed):
    a_hat, w = random_case(seed)
    assert (pow2_exponents(a_hat)[1] < 0).any()  # right shifts are exercised
    assert torch.equal(shift_linear(a_hat, w, 4), a_hat @ w.T)


def test_shift_matmul_against_exact_fractions():
    a_hat, w = random_case(7, n=2, i=5, o=3)
    acc, frac = shift_matmul(to_fixed(w, 4), 4, *pow2_exponents(a_hat))
    for n in range(2):
        for o in range(3):
            exact = sum(Fraction(float(w[o, i])) * Fraction(float(a_hat[n, i])) for i in range(5))
            assert Fraction(int(acc[n, o]), 2**frac) == exact


def test_shift_conv2d_equals_conv2d_exactly():
    g = torch.Generator().manual_seed(0)
    x_hat = log_quantize(torch.relu(torch.randn(2, 3, 7, 7, generator=g, dtype=torch.float64)), 4, 1, signed=False)
    w = torch.round(torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64) * 8) / 8
    for stride, padding in [(1, 0), (2, 1)]:
        got = shift_conv2d(x_hat, w, 3, stride=stride, padding=padding)
        assert torch.equal(got, F.conv2d(x_hat, w, stride=stride, padding=padding))


def test_all_zero_activations_and_bad_weights():
    w = torch.tensor([[0.5, -1.25]])
    assert shift_linear(torch.zeros(3, 2), w, 2).tolist() == [[0.0], [0.0], [0.0]]
    with pytest.raises(QuantParamError, match="multiple of 2"):
        shift_linear(torch.ones(1, 2), w, 1)  # -1.25 needs 2 fractional bits
    with pytest.raises(TensorValueError):
        shift_linear(torch.tensor([[math.nan, 1.0]]), w, 2)


def test_overflow_is_refused():
    with pytest.raises(QuantParamError, match="bits"):
        shift_linear(torch.tensor([[2.0**-40, 2.0**20]]), torch.tensor([[1.5, 1.0]]), 1)
