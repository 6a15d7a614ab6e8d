"""Smoke test of the notebook-01 precompute script on a tiny budget (random weights, 100 test images)."""

import json

import pytest
import torch

import mpqlab.experiments.ptq_calibration as script
from mpqlab.checkpoint import save_checkpoint
from mpqlab.errors import DataFileError
from mpqlab.experiments.ptq_calibration import Settings, cut_test_set, planned_points, run, seed_accuracies, summary
from mpqlab.models import mobilenet_v1_small


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "mobilenet_v1_small.pt", mobilenet_v1_small().state_dict(), {"note": "random init"})
    monkeypatch.setenv("MPQLAB_CHECKPOINTS", str(tmp_path))
    return Settings(bits=(4,), methods=("minmax", "kl"), input_minmax=("kl",), calibration_images=32,
                    eval_images=100, seeds=(0, 1))


def test_script_smoke_on_a_tiny_budget(tmp_path, splits, tiny):
    out = tmp_path / "ptq.json"
    result = run(tiny, splits, out=out)
    saved = json.loads(out.read_text())
    assert saved["settings"]["eval_images"] == 100 and saved["test_images"] == 100
    assert saved["seeds"] == [0, 1] and saved["complete"] and "timestamp" in saved
    assert saved["seconds"] > 0 and saved["cpu_seconds"] > 0
    assert [(r["method"], r["w_bits"], r["seed"]) for r in saved["rows"]] == [
        ("float", 32, None),
        ("minmax", 4, 0), ("kl", 4, 0), ("kl (input: minmax)", 4, 0),
        ("minmax", 4, 1), ("kl", 4, 1), ("kl (input: minmax)", 4, 1)]
    assert all(0 <= r["accuracy"] <= 1 for r in result["rows"])
    assert len(seed_accuracies(saved, "kl", 4)) == 2
    table = summary(saved)
    assert list(table.method) == ["minmax", "kl", "kl (input: minmax)"] and table["sd"].notna().all()


def test_a_stopped_run_continues_where_it_stopped(tmp_path, splits, tiny, monkeypatch):
    out = tmp_path / "ptq.json"
    full = run(tiny, splits, out=out)
    partial = dict(full, complete=False, rows=full["rows"][:3])  # stopped after seed 0's kl row
    out.write_text(json.dumps(partial))
    computed = []
    real = script.ptq_accuracy

    def counting(model, bits, act_quantizer, images, *args):
        computed.append(bits)
        return real(model, bits, act_quantizer, images, *args)

    monkeypatch.setattr(script, "ptq_accuracy", counting)
    resumed = run(tiny, splits, out=out)
    assert len(computed) == 4 and resumed["complete"]  # seed 0's input-minmax row and all of seed 1
    assert [(r["method"], r["seed"]) for r in resumed["rows"]] == [(r["method"], r["seed"]) for r in full["rows"]]
    assert resumed["rows"] == full["rows"]  # the same images and the same test set: the same numbers


def test_missing_seed_is_refused():
    result = {"seeds": [0, 1], "rows": [{"method": "kl", "w_bits": 4, "seed": 0, "accuracy": 0.5}]}
    with pytest.raises(DataFileError, match=r"seed\(s\) \[1\]"):
        seed_accuracies(result, "kl", 4)


def test_plan_is_seed_by_seed():
    plan = planned_points(Settings(bits=(8, 4), methods=("minmax",), input_minmax=("kl",), seeds=(0, 1)))
    assert plan == [("minmax", 8, 0), ("minmax", 4, 0), ("kl (input: minmax)", 8, 0), ("kl (input: minmax)", 4, 0),
                    ("minmax", 8, 1), ("minmax", 4, 1), ("kl (input: minmax)", 8, 1), ("kl (input: minmax)", 4, 1)]


def test_cut_test_set_keeps_train(splits):
    small = cut_test_set(splits, 50)
    assert len(small.test) == 50 and small.train is splits.train
    assert cut_test_set(splits, None) is splits
