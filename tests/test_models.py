import pytest
import torch

from mpqlab.cost import layer_table
from mpqlab.models import build_model, mobilenet_v1, mobilenet_v1_small, resnet20
from mpqlab.quant.policy import quantizable_layers


def test_mobilenet_v1_matches_the_paper():
    """Howard et al. 2017, Table 1/2: 569 million mult-adds and 4.2 million parameters at width 1.0, 224x224."""
    table = layer_table(mobilenet_v1(), (1, 3, 224, 224))
    assert table.macs.sum() == pytest.approx(569e6, rel=0.01)
    assert table.params.sum() == pytest.approx(4.2e6, rel=0.01)
    assert (table.kind == "depthwise").sum() == 13 and (table.kind == "pointwise").sum() == 13
    assert table.loc["conv1.conv", "out_hw"] == "112x112" and table.loc["pw13.conv", "out_hw"] == "7x7"


def test_layer_names_say_depthwise_and_pointwise():
    names = quantizable_layers(mobilenet_v1_small())
    assert names[0] == "conv1.conv" and names[1:3] == ["dw1.conv", "pw1.conv"] and names[-1] == "fc"
    assert len(names) == 28


def test_small_mobilenet_and_resnet20_shapes():
    x = torch.randn(2, 1, 32, 32)
    assert mobilenet_v1_small()(x).shape == (2, 10)
    model = resnet20()
    assert model(x).shape == (2, 10)
    table = layer_table(model, (1, 1, 32, 32))
    assert len(table) == 20 and table.loc["layer3.2.conv2", "out_hw"] == "8x8"
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(0.27e6, rel=0.02)  # He et al.: 0.27M


def test_small_mobilenet_keeps_a_4x4_map():
    table = layer_table(mobilenet_v1_small(), (1, 1, 32, 32))
    assert table.loc["conv1.conv", "out_hw"] == "32x32" and table.loc["pw13.conv", "out_hw"] == "4x4"


def test_bad_arguments():
    with pytest.raises(ValueError, match="width must be"):
        mobilenet_v1(width=0)
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        build_model("vgg")
