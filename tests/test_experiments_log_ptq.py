"""Notebook 02's precompute: linear and log grids, paired calibration seeds, resumable."""

import json

import pytest
import torch
from torch.utils.data import TensorDataset

from mpqlab.data import Splits
from mpqlab.errors import UsageError
from mpqlab.experiments.log_ptq import Settings, planned, quantized, run
from mpqlab.models import mobilenet_v1_small
from mpqlab.quant.log import LogQuantizer
from mpqlab.quant.policy import model_policy


def tiny_splits(n=24):
    g = torch.Generator().manual_seed(0)
    make = lambda: TensorDataset(torch.randn(n, 1, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))
    return Splits(make(), make(), make())


def test_middle_layers_get_the_method_and_the_ends_stay_uniform():
    fp = mobilenet_v1_small().eval()
    images = torch.randn(8, 1, 32, 32)
    q = quantized(fp, "log sqrt(2)", 4, images)
    assert isinstance(q.pw4.conv.w_quantizer, LogQuantizer) and isinstance(q.pw4.conv.a_quantizer, LogQuantizer)
    assert not isinstance(q.conv1.conv.w_quantizer, LogQuantizer) and model_policy(q)["fc"] == (8, 8)
    only_weights = quantized(fp, "log2", 4, images, side="weights")
    assert model_policy(only_weights)["pw4.conv"] == (4, None) and model_policy(only_weights)["fc"] == (8, 8)
    with pytest.raises(UsageError, match="method must be one of"):
        quantized(fp, "log3", 4, images)
    with pytest.raises(UsageError, match="side must be"):
        quantized(fp, "log2", 4, images, side="both")


def test_plan_is_seed_by_seed_then_the_one_sided_runs():
    plan = planned(Settings(bits=(4,), methods=("linear", "log2"), seeds=(0, 1)))
    assert plan == [(0, "linear", 4, None), (0, "log2", 4, None), (1, "linear", 4, None), (1, "log2", 4, None),
                    (0, "log2", 4, "weights"), (0, "log2", 4, "activations"),
                    (1, "log2", 4, "weights"), (1, "log2", 4, "activations")]


def test_run_writes_every_network_and_resumes(tmp_path, capsys):
    settings = Settings(bits=(4,), methods=("linear", "log2"), calibration_images=8, seeds=(0, 1))
    out = tmp_path / "log_ptq.json"
    first = run(settings, tiny_splits(), out=out)
    assert first["complete"] and len(first["runs"]) == 8 and first["test_images"] == 24
    assert json.loads(out.read_text())["runs"] == first["runs"]
    again = run(settings, tiny_splits(), out=out)  # nothing left to do: the same rows, no new work
    assert again["runs"] == first["runs"] and "8 points kept, 0 to go" in capsys.readouterr().out
