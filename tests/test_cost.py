import pytest
import torchvision

from mpqlab.cost import bitops, layer_table, model_size_bits, policy_summary
from mpqlab.errors import PolicyError
from mpqlab.models import mobilenet_v1


@pytest.fixture(scope="module")
def mbv1_table():
    return layer_table(mobilenet_v1(), (1, 3, 224, 224))


def test_limpq_mobilenet_w4a4_bitops(mbv1_table):
    """LIMPQ (Tang et al. 2022), Table 2: uniform W4A4 MobileNetV1 with first/last layers at 8 bits: 9.68 G BitOps."""
    assert bitops(mbv1_table, (4, 4), first_last_bits=8) / 1e9 == pytest.approx(9.68, abs=0.02)


def test_bitops_and_size_by_hand(mbv1_table):
    t = mbv1_table
    policy = {"conv1.conv": (8, 8), "dw1.conv": (2, 3)}
    expected = t.macs["conv1.conv"] * 64 + t.macs["dw1.conv"] * 6 + (t.macs.sum() - t.macs[["conv1.conv", "dw1.conv"]].sum()) * 1024
    assert bitops(t, policy) == expected
    assert model_size_bits(t, (4, 8)) == 4 * t.params.sum()
    summary = policy_summary(t, (4, 4), first_last_bits=8)
    ends = t.params[["conv1.conv", "fc"]].sum()
    assert summary["compression_ratio"] == pytest.approx(32 * t.params.sum() / (4 * (t.params.sum() - ends) + 8 * ends))
    assert summary["size_mb"] == pytest.approx(summary["size_bits"] / 8e6)


def test_works_on_torchvision_models():
    table = layer_table(torchvision.models.resnet18(), (1, 3, 224, 224))
    assert table.macs.sum() == pytest.approx(1.814e9, rel=0.01)  # the well-known 1.8 GMACs
    assert table.loc["fc", "kind"] == "linear" and table.loc["layer1.0.conv1", "kind"] == "conv"


def test_unknown_layer_in_policy(mbv1_table):
    with pytest.raises(PolicyError, match="'conv99'"):
        bitops(mbv1_table, {"conv99": (4, 4)})
