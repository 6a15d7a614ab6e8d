"""Layers, first/last layers and conv -> BatchNorm pairs from the traced graph; --model specs; MACs vs torchvision."""

import pytest
import torch
import torchvision
from torch import nn

from mpqlab.cost import bitops, layer_table
from mpqlab.graph import GraphError, layer_graph
from mpqlab.limpq.joint import SwitchableBatchNorm2d, bn_name, joint_model, searchable_layers, set_bits
from mpqlab.model_zoo import ModelSpecError, input_channels, resolve_model
from mpqlab.models import BUILDERS, mobilenet_v1
from mpqlab.quant.policy import quantizable_layers
from mpqlab.errors import CheckpointError


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_workbook_models_keep_their_layers_order_and_batchnorms(name):
    model = BUILDERS[name]()
    graph = layer_graph(model)
    names = quantizable_layers(model)
    assert graph.layers == names  # the workbook's default: same layers, same order
    assert graph.first == [names[0]] and graph.last == [names[-1]]
    assert searchable_layers(model) == (names[1:-1], [names[0], names[-1]])
    assert graph.bn_after and all(bn == bn_name(conv) for conv, bn in graph.bn_after.items())


def test_resnet18_downsample_batchnorm_is_found_from_the_graph():
    graph = layer_graph(torchvision.models.resnet18())
    assert graph.first == ["conv1"] and graph.last == ["fc"] and len(graph.layers) == 21
    assert graph.bn_after["layer2.0.downsample.0"] == "layer2.0.downsample.1"  # bn_name would say ...downsample.0
    assert graph.layers.index("layer2.0.downsample.0") == graph.layers.index("layer2.0.conv2") + 1  # runs after conv2


def test_mobilenet_v2_nested_batchnorms_are_found():
    graph = layer_graph(torchvision.models.mobilenet_v2())
    assert graph.first == ["features.0.0"] and graph.last == ["classifier.1"]
    assert graph.bn_after["features.1.conv.0.0"] == "features.1.conv.0.1"
    assert graph.bn_after["features.1.conv.1"] == "features.1.conv.2"  # the projection conv: index 1 -> 2


def test_bn_per_bits_on_torchvision_resnet18_switches_the_downsample_batchnorm():
    model = joint_model(torchvision.models.resnet18(num_classes=3), [2, 4], bn_per_bits=True)
    bn = model.layer2[0].downsample[1]
    assert isinstance(bn, SwitchableBatchNorm2d) and bn.follows == "layer2.0.downsample.0"
    set_bits(model, {"layer2.0.downsample.0": 2}, {})
    assert bn.bits == 2 and model.layer2[0].bn2.bits == 4
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_shape_reads_do_not_make_a_layer_first():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.body, self.head = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Linear(4, 2)

        def forward(self, x):
            y = self.body(self.stem(x)).mean((2, 3))
            return self.head(y.reshape(x.shape[0], -1))  # x.shape feeds the head, x's values do not

    graph = layer_graph(Net())
    assert graph.first == ["stem"] and graph.last == ["head"] and graph.searchable == ["body"]


def test_untraceable_forward_is_a_clear_error():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 1)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x  # depends on the values: fx cannot trace it

    with pytest.raises(GraphError, match="could not trace Branchy"):
        layer_graph(Branchy())


def test_published_macs_of_resnet18_and_mobilenet_v2():
    weights = torchvision.models
    for name, meta in (("resnet18", weights.ResNet18_Weights.IMAGENET1K_V1.meta),
                       ("mobilenet_v2", weights.MobileNet_V2_Weights.IMAGENET1K_V1.meta)):
        macs = layer_table(torchvision.models.get_model(name), (1, 3, 224, 224)).macs.sum()
        assert macs / 1e9 == pytest.approx(meta["_ops"], abs=0.001)  # 1.814 G and 0.301 G


def test_w4a4_mobilenet_v1_bitops_count_true_output_sizes():
    table = layer_table(mobilenet_v1(), (1, 3, 224, 224))
    assert bitops(table, (4, 4), first_last_bits=8) / 1e9 == pytest.approx(9.669, abs=5e-4)  # LIMPQ's counter: 9.68


def test_model_specs(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download"))
    model = resolve_model("torchvision:resnet18", num_classes=5)
    assert model.fc.out_features == 5 and input_channels(model) == 3
    small = resolve_model("mpqlab:mobilenet_v1_small", num_classes=4, in_channels=3)
    assert input_channels(small) == 3 and small.fc.out_features == 4
    own = resolve_model("torchvision.models:resnet18", num_classes=7)  # package.module:factory
    assert own.fc.out_features == 7
    path = tmp_path / "w.pt"
    torch.save(small.state_dict(), path)
    again = resolve_model("mpqlab:mobilenet_v1_small", path, num_classes=4, in_channels=3)
    assert torch.equal(again.fc.weight, small.fc.weight)
    with pytest.raises(CheckpointError, match="size mismatch for fc.weight"):
        resolve_model("mpqlab:mobilenet_v1_small", path, num_classes=9, in_channels=3)
    torch.save({"model": small}, tmp_path / "pickled.pt")  # a pickled module: refused by weights_only=True
    with pytest.raises(CheckpointError, match="could not be read"):
        resolve_model("mpqlab:mobilenet_v1_small", tmp_path / "pickled.pt", num_classes=4, in_channels=3)
    for spec, message in (("resnet18", "must be torchvision:NAME"), ("torchvision:resnet1800", "no classifier"),
                          ("mpqlab:vgg", "no model"), ("no_such_module:f", "cannot import"),
                          ("torch:no_such_factory", "no callable")):
        with pytest.raises(ModelSpecError, match=message):
            resolve_model(spec)
