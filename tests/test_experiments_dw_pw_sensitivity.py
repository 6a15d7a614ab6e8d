"""The notebook-09 precompute script: a tiny real run, the resume logic (with fake runs) and the command line."""

import json

import pytest
import torch

import mpqlab.experiments.dw_pw_sensitivity as script
from mpqlab.checkpoint import save_checkpoint
from mpqlab.errors import UsageError
from mpqlab.experiments.dw_pw_sensitivity import Settings, planned_runs, run
from mpqlab.models import mobilenet_v1_small


def test_script_smoke_on_a_tiny_budget(tmp_path, monkeypatch, splits):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "mobilenet_v1_small.pt", mobilenet_v1_small().state_dict(), {"note": "random init"})
    monkeypatch.setenv("MPQLAB_CHECKPOINTS", str(tmp_path))
    settings = Settings(pairs=(2,), bits=(2,), steps=2, batch_size=8, eval_images=64,
                        calibration_images=16, seeds=(0, 1))
    out = tmp_path / "dw_pw.json"
    result = run(settings, splits, out=out)
    saved = json.loads(out.read_text())
    assert saved["settings"]["steps"] == 2 and saved["seeds"] == [0, 1] and "timestamp" in saved
    assert saved["complete"] is True
    assert [c["seed"] for c in saved["controls"]] == [0, 1]
    assert [(r["layer"], r["kind"], r["bits"], r["pair"], r["seed"]) for r in saved["runs"]] == [
        ("dw2.conv", "depthwise", 2, 2, 0), ("pw2.conv", "pointwise", 2, 2, 0),
        ("dw2.conv", "depthwise", 2, 2, 1), ("pw2.conv", "pointwise", 2, 2, 1)]
    for r in result["runs"]:
        assert r["w_step"] > 0 and r["a_step"] > 0 and r["w_step_init"] > 0
        assert r["w_step_ratio"] == pytest.approx(r["w_step"] / r["w_step_init"])
        assert r["a_step_ratio"] == pytest.approx(r["a_step"] / r["a_step_init"])
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["ptq_accuracy"] <= 1
    for c in saved["controls"]:
        assert 0 <= c["accuracy"] <= 1
    # the seed changes the calibration images, hence the initial steps
    dw = [r for r in saved["runs"] if r["layer"] == "dw2.conv"]
    assert dw[0]["a_step_init"] != dw[1]["a_step_init"]


class FakeRuns:
    """Stands in for the control and single-layer runs: records each call, and can fail at call number ``fail_at``."""

    def __init__(self, monkeypatch, fail_at=None):
        self.calls, self.fail_at = [], fail_at
        monkeypatch.setattr(script, "load_pretrained", lambda name, device: None)
        monkeypatch.setattr(script, "control_run", self.control)
        monkeypatch.setattr(script, "single_layer_run", self.single)

    def _count(self, key):
        self.calls.append(key)
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise KeyboardInterrupt  # as if the precompute was stopped here

    def control(self, fp_model, settings, splits, device="cpu", seed=0):
        self._count(("control", seed))
        return {"seed": seed, "accuracy": 0.9, "accuracy_before": 0.91, "seconds": 1.0}

    def single(self, fp_model, layer, bits, settings, splits, device="cpu", seed=0):
        self._count((layer, bits, seed))
        kind = "depthwise" if layer.startswith("dw") else "pointwise"
        return {"layer": layer, "pair": int(layer[2:-5]), "kind": kind,
                "bits": bits, "seed": seed, "accuracy": 0.8, "ptq_accuracy": 0.7, "w_step": 1.0, "a_step": 1.0,
                "w_step_init": 1.0, "a_step_init": 1.0, "seconds": 1.0}


SMALL = Settings(pairs=(1, 4), seeds=(0, 1))  # 2 seeds x (1 control + 2 pairs x 2 convs x 2 bits) = 18 calls


def test_an_interrupted_precompute_resumes_where_it_stopped(tmp_path, monkeypatch):
    out = tmp_path / "dw_pw.json"
    first = FakeRuns(monkeypatch, fail_at=8)
    with pytest.raises(KeyboardInterrupt):
        run(SMALL, splits="unused", out=out)
    partial = json.loads(out.read_text())  # written after each of the 7 finished runs
    assert partial["complete"] is False and len(partial["controls"]) == 1 and len(partial["runs"]) == 6
    second = FakeRuns(monkeypatch)
    result = run(SMALL, splits="unused", out=out)
    every = [key for seed in SMALL.seeds
             for key in [("control", seed)] + [k for k in planned_runs(SMALL) if k[2] == seed]]
    assert first.calls == every[:8]
    assert second.calls == every[7:]  # the interrupted run and everything after it, nothing before
    assert second.calls[:3] == [("pw4.conv", 4, 0), ("pw4.conv", 2, 0), ("control", 1)]
    saved = json.loads(out.read_text())
    assert saved["complete"] is True and saved == json.loads(json.dumps(result))
    assert [(r["layer"], r["bits"], r["seed"]) for r in saved["runs"]] == planned_runs(SMALL)
    assert [c["seed"] for c in saved["controls"]] == [0, 1]


def test_a_finished_file_is_kept_and_a_deleted_run_is_redone(tmp_path, monkeypatch, capsys):
    out = tmp_path / "dw_pw.json"
    FakeRuns(monkeypatch)
    run(SMALL, splits="unused", out=out)
    again = FakeRuns(monkeypatch)
    run(SMALL, splits="unused", out=out)
    assert again.calls == [] and "nothing to do" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    saved["runs"] = [r for r in saved["runs"] if (r["layer"], r["bits"], r["seed"]) != ("dw1.conv", 2, 1)]
    saved["controls"] = [c for c in saved["controls"] if c["seed"] != 1]
    out.write_text(json.dumps(saved))
    redo = FakeRuns(monkeypatch)
    run(SMALL, splits="unused", out=out)
    assert redo.calls == [("control", 1), ("dw1.conv", 2, 1)]


def test_other_settings_start_afresh(tmp_path, monkeypatch, capsys):
    out = tmp_path / "dw_pw.json"
    FakeRuns(monkeypatch)
    run(SMALL, splits="unused", out=out)
    fresh = FakeRuns(monkeypatch)
    other = Settings(pairs=(1, 4), seeds=(0, 1), steps=41)
    result = run(other, splits="unused", out=out)
    assert "starting afresh" in capsys.readouterr().out
    assert len(fresh.calls) == 18 and result["settings"]["steps"] == 41 and len(result["runs"]) == 16


@pytest.mark.parametrize("bad", [dict(seeds=()), dict(seeds=(1, 1)), dict(pairs=()), dict(steps=0),
                                 dict(eval_images=0)])
def test_unusable_settings_are_refused(bad):
    with pytest.raises(UsageError):
        run(Settings(**bad), splits="unused", out=None)


def test_command_line_sets_seeds_steps_and_the_whole_test_set(tmp_path, monkeypatch):
    seen = {}

    def fake_run(settings, out):
        seen.update(settings=settings, out=out)
        return {"seconds": 0.0}

    monkeypatch.setattr(script, "run", fake_run)
    script.main(["--seeds", "3", "4", "--steps", "5", "--eval-images", "0", "--out", str(tmp_path / "x.json")])
    assert seen["settings"] == Settings(seeds=(3, 4), steps=5, eval_images=None)
    assert seen["out"] == tmp_path / "x.json"
    script.main(["--eval-images", "500", "--out", str(tmp_path / "x.json")])
    assert seen["settings"] == Settings(eval_images=500)
    assert Settings().seeds == (0, 1, 2) and Settings().eval_images is None and Settings().steps == 40
