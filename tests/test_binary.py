"""Binary weights/activations (XNOR-Net style) and the XNOR-popcount dot product."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mpqlab.errors import BitWidthError, TensorValueError
from mpqlab.quant.binary import (
    BinaryActQuantizer, BinaryWeightQuantizer, binarize_weight, binary_act_quantizer, binary_policy,
    binary_weight_quantizer, pack_bits, to_bits, xnor_popcount_dot,
)
from mpqlab.quant.lsq import LSQQuantizer
from mpqlab.quant.policy import model_policy, quantize_model


def test_binary_weights_values_and_gradients_by_hand():
    w = torch.tensor([[0.5, -0.25, 1.5], [-0.1, 0.3, -0.2]], requires_grad=True)
    g = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 2.0]])
    w_b = binarize_weight(w)
    w_b.backward(g)
    a0, a1 = (0.5 + 0.25 + 1.5) / 3, (0.1 + 0.3 + 0.2) / 3  # mean |W| per output channel
    assert torch.allclose(w_b, torch.tensor([[a0, -a0, a0], [-a1, a1, -a1]]))
    # dL/dW_i = g_i alpha 1[|W_i| <= 1] + sign(W_i) / n * sum_j g_j sign(W_j)
    s0 = 1.0 * 1 + 2.0 * -1 + 3.0 * 1
    s1 = -1.0 * -1 + 0.5 * 1 + 2.0 * -1
    expected = [[1.0 * a0 + s0 / 3, 2.0 * a0 - s0 / 3, 0.0 + s0 / 3],  # |1.5| > 1: clipped STE
                [-1.0 * a1 - s1 / 3, 0.5 * a1 + s1 / 3, 2.0 * a1 - s1 / 3]]
    assert torch.allclose(w.grad, torch.tensor(expected), rtol=1e-6)


def test_per_channel_scale_on_a_conv_weight():
    torch.manual_seed(0)
    w = torch.randn(4, 2, 3, 3)
    w_b = BinaryWeightQuantizer()(w)
    alpha = w.abs().mean(dim=(1, 2, 3))  # (4,)
    assert torch.allclose(w_b.abs(), alpha[:, None, None, None].expand_as(w))
    assert torch.equal(w_b > 0, w >= 0)


def test_sign_activations_with_clipped_ste():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.7, 1.5], requires_grad=True)
    y = BinaryActQuantizer()(x)
    y.backward(torch.ones(5))
    assert y.tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_bits_are_fixed_at_one_and_empty_tensors_fail():
    q = BinaryWeightQuantizer()
    assert q.bits == 1
    with pytest.raises(BitWidthError):
        q.bits = 2
    with pytest.raises(TensorValueError):
        q(torch.empty(0, 3))
    with pytest.raises(TensorValueError):
        BinaryActQuantizer()(torch.empty(0))


def test_pack_bits_by_hand():
    packed = pack_bits(torch.tensor([1, 0, 1, 1, 0, 0, 0, 0, 1]))
    assert packed.tolist() == [0b10110000, 0b10000000]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([-1.0, 1.0]), min_size=1, max_size=70), st.randoms(use_true_random=False))
def test_xnor_popcount_equals_float_dot(a_list, rnd):
    w_list = [rnd.choice([-1.0, 1.0]) for _ in a_list]
    a, w = torch.tensor(a_list), torch.tensor(w_list)
    assert int(xnor_popcount_dot(to_bits(a), to_bits(w))) == int((a * w).sum())


def test_xnor_popcount_broadcasts_like_a_matrix_product():
    torch.manual_seed(0)
    a = torch.randint(0, 2, (5, 37)).float() * 2 - 1  # (M, n) of +-1
    w = torch.randint(0, 2, (3, 37)).float() * 2 - 1  # (N, n)
    dots = xnor_popcount_dot(to_bits(a)[:, None, :], to_bits(w)[None, :, :])  # (M, N)
    assert torch.equal(dots, (a @ w.T).long())


def test_xnor_bad_inputs():
    with pytest.raises(TensorValueError, match="lengths"):
        xnor_popcount_dot(torch.tensor([1, 0]), torch.tensor([1, 0, 1]))
    with pytest.raises(TensorValueError, match="only 0 and 1"):
        xnor_popcount_dot(torch.tensor([1, -1]), torch.tensor([1, 0]))
    with pytest.raises(TensorValueError):
        xnor_popcount_dot(torch.tensor([], dtype=torch.uint8), torch.tensor([], dtype=torch.uint8))


def test_binary_policy_keeps_first_and_last_at_8_bits():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    policy = binary_policy(model)
    assert policy == {"0": (8, 8), "2": (1, 1), "4": (8, 8)}
    qmodel = quantize_model(model, policy, weight_quantizer=binary_weight_quantizer,
                            act_quantizer=binary_act_quantizer)
    assert isinstance(qmodel[2].w_quantizer, BinaryWeightQuantizer)
    assert isinstance(qmodel[2].a_quantizer, BinaryActQuantizer)
    assert isinstance(qmodel[0].a_quantizer, LSQQuantizer) and qmodel[0].a_quantizer.signed
    assert model_policy(qmodel) == policy
    qmodel(torch.randn(2, 1, 5, 5)).sum().backward()
    assert qmodel[2].weight.grad is not None
