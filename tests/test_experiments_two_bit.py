import json

import torch
from torch.utils.data import TensorDataset

from mpqlab.data import Splits
from mpqlab.experiments.two_bit import Settings, configs, run


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
    settings = Settings(steps=2, long_steps=3, chunk=1, batch_size=8, eval_images=16, curve_images=8)
    run(settings, splits=tiny_splits(), out=out, only=("longer", "W4A2"))
    saved = json.loads(out.read_text())
    assert [r["label"] for r in saved["runs"]] == ["longer", "W4A2"] and saved["seconds"] > 0
    longer, w4a2 = saved["runs"]
    assert "error" not in longer and longer["steps"][-1] == 3
    assert (w4a2["w_bits"], w4a2["a_bits"]) == (4, 2)


def test_progressive_schedule_runs_its_stages_on_one_model(tmp_path):
    settings = Settings(steps=2, chunk=1, batch_size=8, eval_images=16, curve_images=8)
    result = run(settings, splits=tiny_splits(), out=None, only=("QIL 5-4-3-2",))
    (row,) = result["runs"]
    assert "error" not in row
    assert row["schedule"] == [5, 4, 3, 2] and len(row["stage_accuracy"]) == 4
    assert row["steps"] == [1, 2, 3, 4, 5, 6, 7, 8] and row["accuracy"] == row["stage_accuracy"][-1]
