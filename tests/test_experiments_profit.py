import json

import pytest
import torch
from torch.utils.data import TensorDataset

import mpqlab.experiments.profit as profit_script
from mpqlab.data import Splits
from mpqlab.errors import DataFileError
from mpqlab.experiments.profit import Settings, planned_runs, run, run_key, run_schedule, seed_values
from mpqlab.models.mobilenet_v3 import mobilenet_v3_small_fmnist

TINY = dict(bits=(3,), phase_steps=2, aiwq_steps=1, scheme_steps=1, batch_size=4, calib_images=8, eval_images=8,
            curve_images=4, quant_lr=1e-4, seeds=(0,))  # a random net on 4-image batches can push a 3-bit step below 0 at 1e-3


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
    assert saved["seeds"] == [0] and saved["seconds"] > 0 and saved["cpu_seconds"] > 0 and "timestamp" in saved
    assert saved["complete"]
    assert [(r["bits"], r["freeze"], r["seed"]) for r in saved["runs"]] == [(3, False, 0), (3, True, 0)]
    assert [s["scheme"] for s in saved["schemes"]] == ["unsigned", "signed", "shifted"]
    # a random net on noise may push a step size below 0: then the row records the error instead of crashing
    assert all(("error" in r) != ("phases" in r) for r in saved["runs"])
    assert all(("error" in r) != ("accuracy" in r) for r in saved["schemes"])
    assert len(saved["layers"]) == 24 and saved["layers"][2] == {"name": "blocks.0.dw.conv", "role": "depthwise", "depth": 2}
    assert "complete" in out.with_suffix(".log").read_text() and result["float_accuracy"] == saved["float_accuracy"]


@pytest.mark.slow  # two tiny precomputes, one of them resumed
def test_seeds_pair_runs_and_a_stopped_run_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(profit_script, "load_pretrained", lambda name, device="cpu": mobilenet_v3_small_fmnist().eval())
    settings = Settings(**{**TINY, "seeds": (0, 1)})
    assert planned_runs(settings)[:5] == [("freezing", 3, False, 0), ("freezing", 3, True, 0), ("scheme", 3, "unsigned", 0),
                                          ("scheme", 3, "signed", 0), ("scheme", 3, "shifted", 0)]
    out = tmp_path / "profit.json"
    torch.manual_seed(0)
    saved = json.loads(json.dumps(run(settings, splits=tiny_splits(), out=out)))
    assert [(r["freeze"], r["seed"]) for r in saved["runs"]] == [(False, 0), (True, 0), (False, 1), (True, 1)]
    assert [(s["scheme"], s["seed"]) for s in saved["schemes"]][-1] == ("shifted", 1)
    # a stopped run continues: drop seed 1's last scheme run, and only that one runs again
    out.write_text(json.dumps(dict(saved, schemes=saved["schemes"][:-1], complete=False)))
    resumed = run(settings, splits=tiny_splits(), out=out)
    assert resumed["runs"] == saved["runs"] and resumed["schemes"][:-1] == saved["schemes"][:-1]
    assert run_key(resumed["schemes"][-1]) == ("scheme", 3, "shifted", 1) and resumed["complete"]
    assert resumed["seconds"] >= saved["seconds"]  # the seconds add up over sessions
    # within one seed the freezing and the plain run start from the same calibration
    by_seed = {}
    for r in saved["runs"]:
        if "error" not in r:
            by_seed.setdefault(r["seed"], []).append(r["start_accuracy"])
    assert all(len(set(starts)) == 1 for starts in by_seed.values())


def test_seed_values_pairs_by_seed_and_names_what_is_missing():
    rows = [{"seed": 1, "freeze": True, "accuracy": 0.8}, {"seed": 0, "freeze": True, "accuracy": 0.7},
            {"seed": 0, "freeze": False, "accuracy": 0.6}, {"seed": 1, "freeze": False, "error": "QuantParamError: ..."}]
    assert seed_values(rows, "accuracy", [0, 1], freeze=True) == [0.7, 0.8]  # in the order of the seeds asked for
    assert seed_values(rows, lambda r: 2 * r["accuracy"], [0], freeze=False) == [1.2]
    with pytest.raises(DataFileError, match=r"seed\(s\) \[1\]"):  # failed
        seed_values(rows, "accuracy", [0, 1], freeze=False)
    with pytest.raises(DataFileError, match=r"seed\(s\) \[2\]"):  # never ran
        seed_values(rows, "accuracy", [0, 2], freeze=True)


def test_shipped_results_are_consistent():
    path = profit_script.RESULTS
    if not path.is_file():
        pytest.skip("data/results/profit.json not computed yet")
    saved = json.loads(path.read_text())
    settings = Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved["settings"].items()})
    assert saved["threads"] == 1 and saved["complete"] and len(settings.seeds) >= 3
    assert settings.eval_images == 10_000  # reported accuracies on the full test set
    assert sorted(map(run_key, saved["runs"] + saved["schemes"])) == sorted(planned_runs(settings))
    for r in saved["runs"]:
        frozen = [p["frozen"] for p in r["phases"]]
        assert frozen == ([0, 8, 16, 16] if r["freeze"] else [0, 0, 0, 0])
