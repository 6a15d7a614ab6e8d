import pytest
import torch
from torch import nn

from mpqlab.cost import layer_table
from mpqlab.models import build_model
from mpqlab.models.mobilenet_v3 import BLOCKS, InvertedResidual, activation, mobilenet_v3_small_fmnist
from mpqlab.profit import conv_role
from mpqlab.quant.policy import quantizable_layers


def test_shapes_names_and_size():
    model = mobilenet_v3_small_fmnist()
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    names = quantizable_layers(model)
    assert names[:4] == ["stem.conv", "blocks.0.expand.conv", "blocks.0.dw.conv", "blocks.0.project.conv"]
    assert names[-2:] == ["head.conv", "fc"] and len(names) == 3 * len(BLOCKS) + 3
    table = layer_table(model, (1, 1, 32, 32))
    assert 2e6 < table.macs.sum() < 10e6 and table.params.sum() < 150_000
    assert table.loc["blocks.6.project.conv", "out_hw"] == "4x4"
    assert isinstance(build_model("mobilenet_v3_small"), type(model))


def test_layer_roles():
    model = mobilenet_v3_small_fmnist()
    roles = {n: conv_role(model.get_submodule(n)) for n in quantizable_layers(model)}
    assert roles["blocks.3.expand.conv"] == "expansion" and roles["blocks.3.dw.conv"] == "depthwise"
    assert roles["blocks.3.project.conv"] == "projection" and roles["stem.conv"] == "conv" and roles["fc"] == "linear"
    assert sum(r == "depthwise" for r in roles.values()) == len(BLOCKS)


def test_residual_only_when_shapes_match():
    same, down = InvertedResidual(16, 32, 16, 3, 1, "relu"), InvertedResidual(16, 32, 24, 3, 2, "relu")
    assert same.residual and not down.residual
    x = torch.randn(1, 16, 8, 8)
    for p in same.project.parameters():
        nn.init.zeros_(p)  # a zero projection leaves only the shortcut
    same.eval()
    assert torch.allclose(same(x), x)


def test_hswish_minimum_and_bad_activation():
    h = activation("hswish")
    assert float(h(torch.tensor(-1.5))) == pytest.approx(-3 / 8)
    assert float(h(torch.linspace(-6, 6, 10001)).min()) == pytest.approx(-3 / 8, abs=1e-6)
    with pytest.raises(ValueError, match="activation must be"):
        activation("gelu")
