import json

import torch
from torch.utils.data import TensorDataset

from mpqlab.data import Splits
from mpqlab.experiments.two_bit import Settings, configs, main, planned_runs, run


def tiny_splits(n=40):
    g = torch.Generator().manual_seed(0)
    make = lambda: TensorDataset(torch.randn(n, 1, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))
    return Splits(make(), make(), make())


def test_each_config_changes_one_thing_against_the_sweep_run():
    base, *others = configs(Settings())
    assert base["label"] == "as in the sweep" and (base["w_bits"], base["a_bits"]) == (2, 2)
    for c in others:
        changed = {k for k in base if k != "label" and c[k] != base[k]}
        assert len(changed) == 1 or changed in ({"lr", "quant_lr"}, {"method", "schedule"}), (c["label"], changed)


def test_smoke_writes_the_selected_runs(tmp_path):
    out = tmp_path / "two_bit.json"
    settings = Settings(steps=2, long_steps=3, chunk=1, batch_size=8, eval_images=16, start_images=12, curve_images=8, seeds=(0, 1))
    run(settings, splits=tiny_splits(), out=out, only=("longer", "W4A2"))
    saved = json.loads(out.read_text())
    assert [(r["label"], r["seed"]) for r in saved["runs"]] == [("longer", 0), ("W4A2", 0), ("longer", 1), ("W4A2", 1)]
    assert saved["seconds"] > 0 and saved["cpu_seconds"] > 0 and saved["complete"] and saved["seeds"] == [0, 1]
    longer, w4a2 = saved["runs"][:2]
    assert "error" not in longer and longer["steps"][-1] == 3
    assert (w4a2["w_bits"], w4a2["a_bits"]) == (4, 2)
    # a stopped run continues: drop the last run, and only that one runs again
    out.write_text(json.dumps(dict(saved, runs=saved["runs"][:-1], complete=False)))
    resumed = run(settings, splits=tiny_splits(), out=out, only=("longer", "W4A2"))
    assert resumed["runs"][:-1] == saved["runs"][:-1] and resumed["runs"][-1]["label"] == "W4A2"
    assert len(resumed["runs"]) == 4 and resumed["complete"]


def test_defaults_pair_three_seeds_on_the_full_test_set():
    settings = Settings()
    assert settings.seeds == (0, 1, 2) and settings.eval_images == settings.start_images == 10_000
    runs = planned_runs(settings)
    assert len(runs) == 3 * len(configs(settings)) and [seed for _, seed in runs] == sorted(seed for _, seed in runs)


def test_command_line_takes_seeds(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr("mpqlab.experiments.two_bit.run", lambda settings, out: seen.setdefault("s", settings) and {"seconds": 1.0})
    main(["--seeds", "5", "6", "--long-steps", "9", "--out", str(tmp_path / "x.json")])
    assert seen["s"].seeds == (5, 6) and seen["s"].long_steps == 9


def test_progressive_schedule_runs_its_stages_on_one_model(tmp_path):
    settings = Settings(steps=2, chunk=1, batch_size=8, eval_images=16, start_images=12, curve_images=8, seeds=(0,))
    result = run(settings, splits=tiny_splits(), out=None, only=("QIL 5-4-3-2",))
    (row,) = result["runs"]
    assert "error" not in row
    assert row["schedule"] == [5, 4, 3, 2] and len(row["stage_accuracy"]) == 4
    assert row["steps"] == [1, 2, 3, 4, 5, 6, 7, 8] and row["subset_accuracy"] == row["stage_accuracy"][-1]
    assert row["seed"] == 0


def test_equal_counts_reuse_the_last_stage_score(monkeypatch):
    # start_images == eval_images: the final accuracy is the last stage's score, not a second pass over the test set
    import mpqlab.experiments.two_bit as tb

    monkeypatch.setattr(tb, "evaluate", lambda *a, **k: (_ for _ in ()).throw(AssertionError("scored twice")))
    settings = Settings(steps=1, chunk=1, batch_size=8, eval_images=16, start_images=16, curve_images=8, seeds=(0,))
    (row,) = run(settings, splits=tiny_splits(), out=None, only=("W4A2",))["runs"]
    assert "error" not in row and row["accuracy"] == row["subset_accuracy"] == row["stage_accuracy"][-1]
