"""Smoke test of the notebook-09 precompute script on a tiny budget (random weights, 2 steps, 64 test images)."""

import json

import torch

from mpqlab.checkpoint import save_checkpoint
from mpqlab.experiments.dw_pw_sensitivity import Settings, run
from mpqlab.models import mobilenet_v1_small


def test_script_smoke_on_a_tiny_budget(tmp_path, monkeypatch, splits):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "mobilenet_v1_small.pt", mobilenet_v1_small().state_dict(), {"note": "random init"})
    monkeypatch.setenv("MPQLAB_CHECKPOINTS", str(tmp_path))
    settings = Settings(pairs=(2,), bits=(2,), steps=2, batch_size=8, eval_images=64,
                        calibration_images=16)
    out = tmp_path / "dw_pw.json"
    result = run(settings, splits, out=out)
    saved = json.loads(out.read_text())
    assert saved["settings"]["steps"] == 2 and saved["seed"] == 0 and "timestamp" in saved
    assert [(r["layer"], r["kind"], r["bits"], r["pair"]) for r in saved["runs"]] == [
        ("dw2.conv", "depthwise", 2, 2), ("pw2.conv", "pointwise", 2, 2)]
    for r in result["runs"]:
        assert r["w_step"] > 0 and r["a_step"] > 0 and r["w_step_init"] > 0
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["ptq_accuracy"] <= 1
    assert 0 <= saved["control"]["accuracy"] <= 1
