"""Smoke test of the notebook-01 precompute script on a tiny budget (random weights, 100 test images)."""

import json

import torch

from mpqlab.checkpoint import save_checkpoint
from mpqlab.experiments.ptq_calibration import Settings, cut_test_set, run
from mpqlab.models import mobilenet_v1_small


def test_script_smoke_on_a_tiny_budget(tmp_path, monkeypatch, splits):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "mobilenet_v1_small.pt", mobilenet_v1_small().state_dict(), {"note": "random init"})
    monkeypatch.setenv("MPQLAB_CHECKPOINTS", str(tmp_path))
    settings = Settings(bits=(4,), methods=("minmax", "kl"), input_minmax=("kl",), calibration_images=32,
                        eval_images=100)
    out = tmp_path / "ptq.json"
    result = run(settings, splits, out=out)
    saved = json.loads(out.read_text())
    assert saved["settings"]["eval_images"] == 100 and saved["test_images"] == 100
    assert saved["seed"] == 0 and "timestamp" in saved and saved["seconds"] > 0
    assert [(r["method"], r["w_bits"]) for r in saved["rows"]] == [("float", 32), ("minmax", 4), ("kl", 4), ("kl (input: minmax)", 4)]
    assert all(0 <= r["accuracy"] <= 1 for r in result["rows"])


def test_cut_test_set_keeps_train(splits):
    small = cut_test_set(splits, 50)
    assert len(small.test) == 50 and small.train is splits.train
    assert cut_test_set(splits, None) is splits
