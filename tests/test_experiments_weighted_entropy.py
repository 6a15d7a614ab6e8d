import json

import pytest
import torch

from mpqlab.checkpoint import save_checkpoint
from mpqlab.errors import PolicyError
from mpqlab.experiments.weighted_entropy import (
    PROFILES, EqualPopulationWeightQuantizer, Settings, bit_profile, profile_model, run, study_model,
)
from mpqlab.models import mobilenet_v1_small
from mpqlab.quant.uniform import UniformQuantizer
from mpqlab.quant.weighted_entropy import WeightedEntropyWeightQuantizer, equal_population_levels


@pytest.mark.parametrize("n", [9, 27, 28])
def test_profiles_share_their_bit_widths_and_have_their_shape(n):
    profiles = {name: bit_profile(name, n) for name in PROFILES}
    assert all(sorted(p) == sorted(profiles["DEC"]) for p in profiles.values())  # same multiset -> same mean
    dec, inc, convex, concave = (profiles[k] for k in ("DEC", "INC", "CONVEX", "CONCAVE"))
    assert dec == sorted(dec, reverse=True) and inc == sorted(inc) and dec[0] == 4 and inc[-1] == 4
    mid = n // 2
    assert convex[0] == convex[-1] == 4 and convex[mid] == 2
    assert concave[0] == concave[-1] == 2 and concave[mid] == 4


def test_profile_counts_for_28_layers():
    assert [bit_profile("DEC", 28).count(b) for b in (2, 3, 4)] == [9, 10, 9]


def test_unknown_profile_is_refused():
    with pytest.raises(PolicyError, match="DEC"):
        bit_profile("FLAT", 10)


def test_models_get_the_intended_quantizers():
    model = mobilenet_v1_small()
    q = study_model(model, "equal_population", 2, 8)
    assert isinstance(q.conv1.conv.w_quantizer, UniformQuantizer) and q.conv1.conv.w_quantizer.bits == 8
    assert isinstance(q.fc.w_quantizer, UniformQuantizer)
    assert isinstance(q.pw5.conv.w_quantizer, EqualPopulationWeightQuantizer) and q.pw5.conv.w_quantizer.bits == 2
    full = study_model(model, "uniform_full_range", 2, 8)
    assert not full.pw5.conv.w_quantizer.observer.narrow and q.conv1.conv.w_quantizer.bits == 8
    p = profile_model(model, "CONVEX")
    assert isinstance(p.conv1.conv.w_quantizer, WeightedEntropyWeightQuantizer) and p.conv1.conv.w_quantizer.bits == 4
    assert p.fc.w_quantizer.bits == 4 and p.pw7.conv.w_quantizer.bits == 2


def test_equal_population_quantizer_uses_the_baseline_levels():
    w = torch.randn(8, 4, 1, 1, generator=torch.Generator().manual_seed(0))
    c = equal_population_levels(w, 3)
    w_hat = EqualPopulationWeightQuantizer(3)(w)
    assert torch.isin(w_hat.abs(), c.levels.float()).all()


@pytest.mark.slow  # a few seconds: the first optimizer built in a session imports torch._dynamo
def test_script_smoke_on_a_tiny_budget(tmp_path, monkeypatch, splits):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "mobilenet_v1_small.pt", mobilenet_v1_small().state_dict(), {"note": "random init"})
    monkeypatch.setenv("MPQLAB_CHECKPOINTS", str(tmp_path))
    settings = Settings(methods=("weighted_entropy",), w_bits=(2,), profiles=("DEC",),
                        steps=2, batch_size=8, eval_images=50, seeds=(0, 1))
    out = tmp_path / "we.json"
    result = run(settings, splits=splits, out=out)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    assert [(r["method"], r["w_bits"], r["seed"]) for r in saved["methods"]] == [("weighted_entropy", 2, 0),
                                                                                ("weighted_entropy", 2, 1)]
    assert [(r["profile"], r["seed"]) for r in saved["profiles"]] == [("DEC", 0), ("DEC", 1)]
    assert saved["profiles"][0]["mean_bits"] == 3.0
    for row in saved["methods"] + saved["profiles"]:
        assert 0.0 <= row["ptq_accuracy"] <= 1.0 and 0.0 <= row["finetuned_accuracy"] <= 1.0
    assert saved["settings"]["steps"] == 2 and saved["seeds"] == [0, 1] and saved["complete"]
    assert saved["cpu_seconds"] > 0 and saved["timestamp"]
    # a stopped run continues: drop seed 1's profile, and only that configuration runs again
    out.write_text(json.dumps(dict(saved, profiles=saved["profiles"][:1], complete=False)))
    resumed = run(settings, splits=splits, out=out)
    assert resumed["methods"] == saved["methods"] and resumed["profiles"][0] == saved["profiles"][0]
    assert len(resumed["profiles"]) == 2 and resumed["complete"]
