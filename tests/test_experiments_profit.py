import json

import pytest
import torch
from torch.utils.data import TensorDataset

import mpqlab.experiments.profit as profit_script
from mpqlab.data import Splits
from mpqlab.experiments.profit import Settings, run, run_schedule
from mpqlab.models.mobilenet_v3 import mobilenet_v3_small_fmnist

TINY = dict(bits=(3,), phase_steps=2, aiwq_steps=1, scheme_steps=1, batch_size=4, calib_images=8, eval_images=8,
            quant_lr=1e-4)  # a random net on 4-image batches can push a 3-bit step below 0 at 1e-3


def tiny_splits(n=16):
    g = torch.Generator().manual_seed(0)
    make = lambda: TensorDataset(torch.randn(n, 1, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g))
    return Splits(make(), make(), make())


def test_freezing_schedule_freezes_thirds_then_all():
    torch.manual_seed(0)
    row = run_schedule(mobilenet_v3_small_fmnist(), 3, True, Settings(**TINY), tiny_splits())
    assert [p["frozen"] for p in row["phases"]] == [0, 8, 16, 16]  # 24 layers; the last phase trains only BN
    assert len(row["phases"][0]["aiwq"]) == 24 and len(row["phases"][1]["aiwq"]) == 16
    assert row["phases"][3]["aiwq"] == {}  # nothing but batch norm moves
    first = row["phases"][0]["aiwq"]
    assert sorted(row["phases"][1]["newly_frozen"], key=lambda n: -first[n]) == \
        sorted(first, key=lambda n: -first[n])[:8]
    assert all(0 <= p["accuracy"] <= 1 and p["bn_fluctuation"] >= 0 for p in row["phases"])


def test_run_writes_json_and_log(tmp_path, monkeypatch):
    monkeypatch.setattr(profit_script, "load_pretrained", lambda name, device="cpu": mobilenet_v3_small_fmnist().eval())
    out = tmp_path / "profit.json"
    result = run(Settings(**TINY), splits=tiny_splits(), out=out)
    saved = json.loads(out.read_text())
    assert saved["seed"] == 0 and saved["seconds"] > 0 and "timestamp" in saved
    assert [(r["bits"], r["freeze"]) for r in saved["runs"]] == [(3, False), (3, True)]
    assert [s["scheme"] for s in saved["schemes"]] == ["unsigned", "signed", "shifted"]
    # a random net on noise may push a step size below 0: then the row records the error instead of crashing
    assert all(("error" in r) != ("phases" in r) for r in saved["runs"])
    assert all(("error" in r) != ("accuracy" in r) for r in saved["schemes"])
    assert len(saved["layers"]) == 24 and saved["layers"][2] == {"name": "blocks.0.dw.conv", "role": "depthwise", "depth": 2}
    assert "total" in out.with_suffix(".log").read_text() and result["float_accuracy"] == saved["float_accuracy"]


def test_shipped_results_are_consistent():
    path = profit_script.RESULTS
    if not path.is_file():
        pytest.skip("data/results/profit.json not computed yet")
    saved = json.loads(path.read_text())
    assert saved["seed"] == 0 and saved["threads"] == 1
    for r in saved["runs"]:
        frozen = [p["frozen"] for p in r["phases"]]
        assert frozen == ([0, 8, 16, 16] if r["freeze"] else [0, 0, 0, 0])
