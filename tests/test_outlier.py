import math

import pytest
import torch
from torch import nn

from mpqlab.errors import BitWidthError, QuantParamError, TensorValueError
from mpqlab.quant.outlier import (
    CompressedSavedActivations, OutlierQuantizer, compress_for_backward, decompress, outlier_act_quantizer,
    outlier_quantize, outlier_threshold, outlier_weight_quantizer, pack_bits, unpack_bits,
)
from mpqlab.quant.policy import quantize_model, uniform_policy


def test_threshold_is_an_order_statistic_over_nonzero_values():
    x = torch.cat([torch.arange(1, 101, dtype=torch.float32), torch.zeros(50)])  # zeros must not count
    x = x * torch.where(torch.arange(150) % 2 == 0, 1.0, -1.0)
    assert outlier_threshold(x, 0.05) == 95.0  # 5 of the 100 non-zero |x| lie above
    r = outlier_quantize(x, 4, outlier_threshold(x, 0.05))
    assert r.n_outliers == 5 and sorted(x[r.outliers].abs().tolist()) == [96.0, 97.0, 98.0, 99.0, 100.0]
    assert outlier_threshold(x, 0.0) == 100.0


def test_outliers_kept_and_inliers_on_the_grid():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    r = outlier_quantize(x, 3, outlier_threshold(x, 0.02))
    assert torch.equal(r.x_hat[r.outliers], x[r.outliers])
    codes = r.x_hat[~r.outliers] / r.scale
    assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.abs().max() <= 3
    assert (r.x_hat[~r.outliers] - x[~r.outliers]).abs().max() <= r.scale / 2 + 1e-6


@pytest.mark.parametrize("signed,bits", [(True, 4), (False, 3)])
def test_ratio_zero_is_linear_quantization_like_pytorch(signed, bits):
    x = torch.randn(500, generator=torch.Generator().manual_seed(1))
    x = x if signed else x.relu()
    r = outlier_quantize(x, bits, outlier_threshold(x, 0.0, signed), signed)
    q_max = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    ref = torch.fake_quantize_per_tensor_affine(x, r.scale, 0, -q_max if signed else 0, q_max)
    assert r.n_outliers == 0 and torch.allclose(r.x_hat, ref, atol=1e-6)


def test_all_zero_and_gradient():
    r = outlier_quantize(torch.zeros(4, 4), 4, outlier_threshold(torch.zeros(4, 4), 0.1))
    assert torch.equal(r.x_hat, torch.zeros(4, 4)) and r.n_outliers == 0
    x = torch.randn(20, requires_grad=True)
    outlier_quantize(x, 3, 0.5).x_hat.sum().backward()
    assert torch.equal(x.grad, torch.ones(20))


@pytest.mark.parametrize("ratio", [1.0, -0.1, math.nan, "a"])
def test_bad_ratio(ratio):
    with pytest.raises(QuantParamError):
        outlier_threshold(torch.ones(3), ratio)
    with pytest.raises(QuantParamError):
        OutlierQuantizer(4, ratio=ratio)


def test_bad_bits_and_tensors():
    with pytest.raises(BitWidthError):
        outlier_quantize(torch.ones(3), 1, 1.0, signed=True)
    with pytest.raises(BitWidthError):
        OutlierQuantizer(17)
    with pytest.raises(TensorValueError):
        outlier_threshold(torch.tensor([]), 0.1)
    with pytest.raises(TensorValueError):
        outlier_quantize(torch.tensor([1.0, math.nan]), 4, 1.0)
    with pytest.raises(QuantParamError, match="threshold"):
        outlier_quantize(torch.ones(3), 4, -1.0)


def test_activation_threshold_follows_an_ema_in_training_only():
    q = OutlierQuantizer(4, ratio=0.0, signed=False, momentum=0.25)
    q(torch.tensor([0.0, 4.0]))
    q(torch.tensor([0.0, 8.0]))
    assert float(q.running_threshold) == 5.0  # 0.75 * 4 + 0.25 * 8
    q.eval()
    out = q(torch.tensor([1.0, 10.0]))
    assert float(q.running_threshold) == 5.0 and q.n_outliers == 1 and out[1] == 10.0


def test_factories_plug_into_quantize_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    qmodel = quantize_model(model, uniform_policy(model, 4, 4), weight_quantizer=outlier_weight_quantizer,
                            act_quantizer=outlier_act_quantizer)
    out = qmodel(torch.randn(8, 1, 8, 8))
    assert out.shape == (8, 3)
    w_q = qmodel[3].w_quantizer
    assert w_q.numel == 4 * 6 * 6 * 3 and w_q.n_outliers == math.floor(0.02 * w_q.numel)
    assert qmodel[0].a_quantizer.signed is True and qmodel[3].a_quantizer.signed is False


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_unpack_roundtrip(bits):
    codes = torch.randint(0, 2**bits, (37,), dtype=torch.uint8, generator=torch.Generator().manual_seed(bits))
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(37 * bits / 8)
    assert torch.equal(unpack_bits(packed, bits, 37), codes)


def test_compress_roundtrip_and_byte_count():
    x = torch.relu(torch.randn(10, 100, generator=torch.Generator().manual_seed(2)))
    c = compress_for_backward(x, bits=3, ratio=0.02)
    n_nonzero = int((x > 0).sum())
    k = math.floor(0.02 * n_nonzero)
    assert c.outlier_index.numel() == k
    assert c.nbytes == math.ceil(1000 * 3 / 8) + k * 4 + k * 4 + 4  # codes, int32 index, float32 value, scale
    y = decompress(c)
    outliers = x > float(c.scale) * 7
    assert torch.equal(y[outliers], x[outliers]) and int(outliers.sum()) == k
    assert torch.equal(y > 0, x > 0)  # the ReLU mask survives: small positives round up to the first level
    small = x < float(c.scale) / 2
    assert (y - x)[~small].abs().max() <= float(c.scale) / 2 + 1e-6 and (y - x)[small].abs().max() < float(c.scale)
    with pytest.raises(TensorValueError, match="non-negative"):
        compress_for_backward(torch.tensor([-1.0, 2.0]))


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 8 * 8, 4))


def grads(model, x, y, hooks=None):
    model.zero_grad()
    if hooks is None:
        nn.functional.cross_entropy(model(x), y).backward()
    else:
        with hooks:
            nn.functional.cross_entropy(model(x), y).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_saved_tensor_hooks_compress_and_gradients_flow():
    model = small_net()
    x, y = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(3)), torch.arange(16) % 4
    exact = grads(model, x, y)
    saved = CompressedSavedActivations(bits=3, ratio=0.02)
    approx = grads(model, x, y, saved)
    assert saved.n_compressed >= 3  # both ReLU outputs and the second conv's / linear's inputs
    assert saved.held_bytes < 0.2 * saved.full_bytes  # ~3.3 of 32 bits per value plus the outliers
    assert torch.isfinite(approx).all() and approx.abs().sum() > 0
    assert nn.functional.cosine_similarity(exact, approx, dim=0) > 0.9
    fine = grads(model, x, y, CompressedSavedActivations(bits=8, ratio=0.02))
    assert (fine - exact).norm() < 0.05 * exact.norm()
