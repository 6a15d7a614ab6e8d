import json

import pytest
import torch
from torch.utils.data import TensorDataset

from mpqlab.data import Splits
from mpqlab.errors import DataFileError, PolicyError
from mpqlab.experiments.binary import (
    REFERENCE, Settings, binary_model, config_model, planned_runs, run, seed_accuracies,
)
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


def test_reference_is_lsq_w4a4_and_typos_are_refused_before_any_run(tmp_path):
    fp = mobilenet_v1_small().eval()
    q = config_model(fp, REFERENCE)
    assert model_policy(q)["pw4.conv"] == (4, 4) and model_policy(q)["fc"] == (8, 8)
    with pytest.raises(PolicyError, match="unknown configuration 'W2A2'"):
        config_model(fp, "W2A2")
    with pytest.raises(PolicyError, match="W2A2"):
        run(Settings(configs=("W1A1", "W2A2")), splits=tiny_splits(), out=tmp_path / "never.json")
    assert not (tmp_path / "never.json").exists()


def test_runs_are_planned_seed_by_seed_with_every_config():
    settings = Settings(configs=("W4A4", "W1A1"), seeds=(3, 4))
    assert planned_runs(settings) == [("W4A4", 3), ("W1A1", 3), ("W4A4", 4), ("W1A1", 4)]


@pytest.mark.slow  # a few seconds: the first optimizer built in a session imports torch._dynamo
def test_binary_smoke_writes_json_and_resumes(tmp_path):
    out = tmp_path / "binary.json"
    settings = Settings(configs=("W1A1", "W1A1-all"), steps=2, chunk=1, batch_size=8, eval_images=16,
                        curve_images=8, seeds=(0, 1))
    result = run(settings, splits=tiny_splits(), out=out)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    assert [(r["config"], r["seed"]) for r in saved["runs"]] == [("W1A1", 0), ("W1A1-all", 0),
                                                                 ("W1A1", 1), ("W1A1-all", 1)]
    assert saved["runs"][1]["policy"]["fc"] == [1, 1]
    assert all("error" in r or len(r["val_accuracy"]) == 2 for r in saved["runs"])
    assert saved["complete"] and saved["seeds"] == [0, 1] and saved["seconds"] > 0 and saved["timestamp"]
    # a stopped run continues: drop seed 1's last run, and only that one runs again; seconds add up
    out.write_text(json.dumps(dict(saved, runs=saved["runs"][:3], complete=False, seconds=1000.0)))
    resumed = run(settings, splits=tiny_splits(), out=out)
    assert resumed["runs"][:3] == saved["runs"][:3] and len(resumed["runs"]) == 4 and resumed["complete"]
    assert resumed["seconds"] > 1000.0
    # other settings start afresh rather than mixing runs
    fresh = run(Settings(configs=("W1A1",), steps=2, chunk=1, batch_size=8, eval_images=16, curve_images=8,
                         seeds=(0,)), splits=tiny_splits(), out=out)
    assert [(r["config"], r["seed"]) for r in fresh["runs"]] == [("W1A1", 0)] and fresh["seconds"] < 1000.0


def test_seed_accuracies_are_paired_by_seed_and_refuse_gaps():
    result = {"seeds": [2, 0], "runs": [{"config": "W1A1", "seed": 0, "accuracy": 0.5, "start_accuracy": 0.1},
                                        {"config": "W1A1", "seed": 2, "accuracy": 0.7, "start_accuracy": 0.1},
                                        {"config": "W4A4", "seed": 2, "error": "QuantParamError: step"}]}
    assert seed_accuracies(result, "W1A1") == [0.7, 0.5]  # the order of result["seeds"], not of the file
    assert seed_accuracies(result, "W1A1", "start_accuracy") == [0.1, 0.1]
    with pytest.raises(DataFileError, match=r"seed\(s\) \[2, 0\].*QuantParamError"):
        seed_accuracies(result, "W4A4")
