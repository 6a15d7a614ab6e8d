import json

import pytest
import torch
from torch.utils.data import TensorDataset

from mpqlab.data import Splits
from mpqlab.experiments.qat_sweep import Settings, main, planned_runs, run


def tiny_splits(n=40):
    g = torch.Generator().manual_seed(0)
    make = lambda: TensorDataset(torch.randn(n, 1, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))
    return Splits(make(), make(), make())


def test_defaults_pair_three_seeds_on_the_full_test_set():
    settings = Settings()
    assert settings.seeds == (0, 1, 2) and settings.eval_images == settings.start_images == 10_000
    runs = planned_runs(settings)
    assert len(runs) == 3 * (4 * 3 + 1)
    # every configuration with every seed, seed by seed: a stopped precompute leaves whole seeds behind it
    configs = {r[:3] for r in runs}
    assert all((*c, seed) in runs for c in configs for seed in settings.seeds)
    assert [r[3] for r in runs] == sorted(r[3] for r in runs)
    assert ("lsq", 3, False, 2) in runs


@pytest.mark.slow  # a few seconds: real fine-tunes of the shipped MobileNetV1-small on random images
def test_sweep_smoke_writes_runs_and_the_ablation_and_resumes(tmp_path):
    out = tmp_path / "qat_sweep.json"
    settings = Settings(methods=("lsq", "pact"), bits=(2,), steps=2, chunk=1, batch_size=8, eval_images=16,
                        curve_images=8, ablation_bits=2, seeds=(0, 1))
    result = run(settings, splits=tiny_splits(), out=out)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["seeds"] == [0, 1] and saved["complete"] and saved["seconds"] > 0 and saved["cpu_seconds"] > 0
    assert "timestamp" in saved
    keys = [(r["method"], r["bits"], r["grad_scale"], r["seed"]) for r in saved["runs"]]
    assert keys == [("lsq", 2, True, 0), ("pact", 2, True, 0), ("lsq", 2, False, 0),
                    ("lsq", 2, True, 1), ("pact", 2, True, 1), ("lsq", 2, False, 1)]
    for r in result["runs"]:
        assert "error" in r or (len(r["val_accuracy"]) == 2 and len(r["clips"]) == 28)
        assert "error" in r or all(0 <= r[k] <= 1 for k in ("start_accuracy", "subset_accuracy", "accuracy"))
    # a stopped run continues: drop the last run, and only that one runs again
    out.write_text(json.dumps(dict(saved, runs=saved["runs"][:-1], complete=False)))
    resumed = run(settings, splits=tiny_splits(), out=out)
    assert resumed["runs"][:-1] == saved["runs"][:-1] and len(resumed["runs"]) == 6 and resumed["complete"]
    assert resumed["runs"][-1]["seed"] == 1 and not resumed["runs"][-1]["grad_scale"]


def test_other_settings_start_afresh(tmp_path, capsys):
    out = tmp_path / "qat_sweep.json"
    out.write_text(json.dumps({"settings": {"steps": 1}, "runs": [{"method": "lsq"}], "seconds": 1e6}))
    settings = Settings(methods=("lsq",), bits=(2,), steps=1, chunk=1, batch_size=8, eval_images=8, start_images=8,
                        curve_images=8, ablation_bits=0, seeds=(0,))
    result = run(settings, splits=tiny_splits(), out=out)
    assert "starting afresh" in capsys.readouterr().out
    assert [r["seed"] for r in result["runs"]] == [0] and result["seconds"] < 1e6  # not carried over


def test_command_line_takes_seeds(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr("mpqlab.experiments.qat_sweep.run",
                        lambda settings, out: seen.setdefault("s", settings) and {"seconds": 1.0})
    main(["--seeds", "3", "4", "5", "--steps", "7", "--no-ablation", "--out", str(tmp_path / "x.json")])
    assert seen["s"].seeds == (3, 4, 5) and seen["s"].steps == 7 and seen["s"].ablation_bits == 0


def test_by_seed_pairs_and_formats():
    from mpqlab.experiments.qat_sweep import by_seed, mean_sd, paired_points

    runs = [{"method": "lsq", "bits": 4, "grad_scale": True, "seed": s, "accuracy": 0.80 + 0.01 * s} for s in range(3)]
    runs += [{"method": "pact", "bits": 4, "grad_scale": True, "seed": s, "accuracy": 0.70 + 0.01 * s} for s in range(3)]
    runs += [{"method": "lsq", "bits": 3, "grad_scale": True, "seed": 0, "error": "QuantParamError: step < 0"}]
    lsq, pact = by_seed(runs, method="lsq", bits=4), by_seed(runs, method="pact", bits=4)
    assert lsq == pytest.approx({0: 80.0, 1: 81.0, 2: 82.0}) and by_seed(runs, method="lsq", bits=3) == {}
    diff = paired_points(lsq, pact)
    assert diff.n == 3 and diff.mean == pytest.approx(10.0) and diff.detectable
    assert mean_sd(lsq.values()) == "81.0 ± 1.0" and mean_sd([]) == "failed"


def test_equal_counts_score_the_test_set_once(monkeypatch):
    # start_images == eval_images: the final accuracy is fine_tune's own score, not a second pass over the test set
    import mpqlab.experiments.qat_sweep as qs

    calls = []
    monkeypatch.setattr(qs, "evaluate", lambda *a, **k: calls.append(1) or 0.5)
    settings = Settings(methods=("lsq",), bits=(2,), steps=1, chunk=1, batch_size=8, eval_images=16, start_images=16,
                        curve_images=8, ablation_bits=0, seeds=(0,))
    (row,) = run(settings, splits=tiny_splits(), out=None)["runs"]
    assert "error" not in row and row["accuracy"] == row["subset_accuracy"]
    assert calls == [1]  # only the float model's score in run(); the quantized runs' scores come from fine_tune
