import json

import pytest
import torch
from torch.utils.data import TensorDataset

from mpqlab.data import Splits
from mpqlab.errors import PolicyError
from mpqlab.experiments.binary import Settings, binary_model, run
from mpqlab.models import mobilenet_v1_small
from mpqlab.quant.binary import BinaryActQuantizer, BinaryWeightQuantizer
from mpqlab.quant.policy import model_policy


def tiny_splits(n=40):
    g = torch.Generator().manual_seed(0)
    make = lambda: TensorDataset(torch.randn(n, 1, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))
    return Splits(make(), make(), make())


def test_configurations_have_the_intended_quantizers():
    fp = mobilenet_v1_small().eval()
    assert model_policy(binary_model(fp, "W1A32"))["pw4.conv"] == (1, None)
    q = binary_model(fp, "W1A1")
    assert model_policy(q)["conv1.conv"] == (8, 8) and model_policy(q)["pw4.conv"] == (1, 1)
    assert isinstance(q.pw4.conv.w_quantizer, BinaryWeightQuantizer)
    q = binary_model(fp, "W1A1-all")
    assert model_policy(q)["conv1.conv"] == (1, 1) and model_policy(q)["fc"] == (1, 1)
    assert isinstance(q.conv1.conv.a_quantizer, BinaryActQuantizer)
    with pytest.raises(PolicyError, match="unknown binary configuration"):
        binary_model(fp, "W2A2")


def test_sign_activations_after_relu_are_all_plus_one():
    q = binary_model(mobilenet_v1_small().eval(), "W1A1-sign")
    seen = []
    q.pw4.conv.a_quantizer.register_forward_hook(lambda m, i, o: seen.append(o))
    q(torch.randn(4, 1, 32, 32))
    assert torch.all(seen[0] == 1.0)


def test_binary_smoke_writes_json(tmp_path):
    out = tmp_path / "binary.json"
    run(Settings(configs=("W1A1", "W1A1-all"), steps=2, chunk=1, batch_size=8, eval_images=16, curve_images=8),
        splits=tiny_splits(), out=out)
    saved = json.loads(out.read_text())
    assert [r["config"] for r in saved["runs"]] == ["W1A1", "W1A1-all"]
    assert saved["runs"][1]["policy"]["fc"] == [1, 1]
    assert all("error" in r or len(r["val_accuracy"]) == 2 for r in saved["runs"])
