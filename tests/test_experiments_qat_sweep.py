import json

import torch
from torch.utils.data import TensorDataset

from mpqlab.data import Splits
from mpqlab.experiments.qat_sweep import Settings, run


def tiny_splits(n=40):
    g = torch.Generator().manual_seed(0)
    make = lambda: TensorDataset(torch.randn(n, 1, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))
    return Splits(make(), make(), make())


def test_sweep_smoke_writes_runs_and_the_ablation(tmp_path):
    out = tmp_path / "qat_sweep.json"
    settings = Settings(methods=("lsq", "pact"), bits=(2,), steps=2, chunk=1, batch_size=8, eval_images=16,
                        curve_images=8, ablation_bits=2)
    result = run(settings, splits=tiny_splits(), out=out)
    saved = json.loads(out.read_text())
    assert saved["seed"] == 0 and saved["seconds"] > 0 and "timestamp" in saved
    keys = [(r["method"], r["bits"], r["grad_scale"]) for r in saved["runs"]]
    assert keys == [("lsq", 2, True), ("pact", 2, True), ("lsq", 2, False)]
    for r in result["runs"]:
        assert "error" in r or (len(r["val_accuracy"]) == 2 and len(r["clips"]) == 28)
