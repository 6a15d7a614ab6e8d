import pytest
import torch
from torch import nn

from mpqlab.errors import BitWidthError, QuantParamError, TensorValueError
from mpqlab.models.mobilenet_v3 import mobilenet_v3_small_fmnist
from mpqlab.quant.hswish_shift import (HSWISH_SHIFT, ShiftedActQuantizer, act_quantizer_for, codes_used,
                                       compare_schemes, fold_shift, grid_low, input_activations, range_quantize)
from mpqlab.quant.lsq import LSQQuantizer


def hswish_samples(n=20000):
    return nn.functional.hardswish(torch.randn(n, generator=torch.Generator().manual_seed(0)) * 2)


@pytest.mark.parametrize("conv", [nn.Conv2d(6, 5, 3, padding=1), nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6),
                                  nn.Conv2d(6, 4, 1, bias=False), nn.Conv2d(6, 6, 5, padding=2, groups=6, bias=False)])
def test_folded_conv_reads_the_shifted_input_and_matches(conv):
    torch.manual_seed(0)
    x = nn.functional.hardswish(torch.randn(2, 6, 9, 9) * 2)
    assert torch.allclose(fold_shift(conv)(x + HSWISH_SHIFT), conv(x), atol=1e-5)


def test_folding_after_the_shifted_quantizer_gives_the_same_output():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    x = nn.functional.hardswish(torch.randn(2, 4, 8, 8) * 2)
    q = ShiftedActQuantizer(3)
    with torch.no_grad():
        x_hat = q(x)  # simulated: Q(x + d) - d
        unsigned = q.lsq(x + HSWISH_SHIFT)  # what the deployed integer conv reads: Q(x + d) >= 0
    assert float(unsigned.min()) >= 0 and float(x_hat.min()) >= -HSWISH_SHIFT - 1e-6
    assert torch.allclose(fold_shift(conv)(unsigned), conv(x_hat), atol=1e-5)
    # zero padding (not the shift) at the border breaks the identity: the border pixels differ
    naive = nn.functional.conv2d(unsigned, conv.weight, fold_shift(conv).bias, padding=1, groups=4)
    assert not torch.allclose(naive, conv(x_hat), atol=1e-3)


def test_shifted_grid_wastes_no_codes_and_has_the_least_error():
    x = hswish_samples()
    rows = {r["scheme"]: r for r in compare_schemes(x, 4, high=float(x.max()))}
    assert rows["unsigned"]["negatives_zeroed"] > 0.9  # almost every negative output becomes 0
    assert rows["signed"]["codes_used"] <= 9 + 1  # only one code below zero is reachable (-3/8 > -step)
    assert rows["shifted"]["codes_used"] == 16
    assert rows["shifted"]["mse"] < rows["signed"]["mse"] and rows["shifted"]["mse"] < rows["unsigned"]["mse"]


def test_range_quantize_and_grid_low():
    assert range_quantize(torch.tensor([-1.0, 0.2, 0.9, 9.0]), 0.0, 3.0, 2).tolist() == [0.0, 0.0, 1.0, 3.0]
    assert grid_low("signed", 7.0, 4) == pytest.approx(-8.0) and grid_low("shifted", 7.0, 4) == -HSWISH_SHIFT
    assert codes_used(torch.tensor([0.0, 1.0, 1.0, 3.0]), 0.0, 3.0, 2) == 3
    with pytest.raises(QuantParamError, match="high > low"):
        range_quantize(torch.zeros(3), 1.0, 1.0, 4)
    with pytest.raises(QuantParamError, match="scheme"):
        grid_low("nonsense", 1.0, 4)
    with pytest.raises(BitWidthError):
        range_quantize(torch.zeros(3), 0.0, 1.0, 0)
    with pytest.raises(TensorValueError):
        compare_schemes(torch.tensor([0.1, float("nan")]), 4, 1.0)


def test_input_activations_and_quantizer_choice():
    kinds = input_activations(mobilenet_v3_small_fmnist())
    assert kinds["stem.conv"] == "none" and kinds["blocks.0.dw.conv"] == "relu"
    assert kinds["blocks.4.dw.conv"] == "hswish" and kinds["blocks.4.project.conv"] == "hswish"
    assert kinds["blocks.4.expand.conv"] == "none" and kinds["fc"] == "hswish"
    assert isinstance(act_quantizer_for("hswish", "shifted", 4), ShiftedActQuantizer)
    assert act_quantizer_for("none", "shifted", 4).signed and not act_quantizer_for("relu", "signed", 4).signed
    assert isinstance(act_quantizer_for("hswish", "signed", 4), LSQQuantizer)
    with pytest.raises(QuantParamError, match="scheme"):
        act_quantizer_for("hswish", "asymmetric", 4)
    with pytest.raises(QuantParamError, match="input kind"):
        act_quantizer_for("gelu", "shifted", 4)


def test_shifted_quantizer_bits_follow():
    q = ShiftedActQuantizer(4, bit_options=[3, 4])
    q.bits = 3
    assert q.lsq.bits == 3
    with pytest.raises(BitWidthError):
        q.bits = 0
    with pytest.raises(BitWidthError, match="no step size"):
        q.bits = 5
    assert q.bits == 3 and q.lsq.bits == 3
