import json

import pytest
import torch
from torch.utils.data import TensorDataset

from mpqlab.checkpoint import save_checkpoint
from mpqlab.data import Splits
from mpqlab.experiments import outlier_backprop, outlier_ptq
from mpqlab.models import mobilenet_v1_small
from mpqlab.errors import UsageError
from mpqlab.quant.outlier import (
    CompressedSavedActivations, OutlierQuantizer, compress_for_backward, decompress,
)


@pytest.fixture
def random_checkpoint(tmp_path, monkeypatch):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "mobilenet_v1_small.pt", mobilenet_v1_small().state_dict(), {"note": "random init"})
    monkeypatch.setenv("MPQLAB_CHECKPOINTS", str(tmp_path))
    return tmp_path


@pytest.fixture
def small(splits):
    parts = (splits.train, splits.val, splits.test)
    return Splits(*(TensorDataset(*(t[:256] for t in part.tensors)) for part in parts))


def test_outlier_model_and_threshold_calibration():
    model = mobilenet_v1_small().eval()
    q = outlier_ptq.outlier_aware_model(model, 3, 0.02)
    assert isinstance(q.pw5.conv.w_quantizer, OutlierQuantizer) and q.pw5.conv.w_quantizer.bits == 3
    assert q.conv1.conv.a_quantizer.bits == 8 and q.fc.w_quantizer.ratio == 0.02
    images = torch.randn(32, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    outlier_ptq.calibrate_thresholds(q, images, batch_size=16)
    a_q = q.pw5.conv.a_quantizer
    assert int(a_q.num_batches) == 2 and float(a_q.running_threshold) > 0 and a_q.signed is False
    assert q.conv1.conv.a_quantizer.signed is True  # the normalised image has negative pixels
    bn = q.pw5.bn
    assert torch.equal(bn.running_mean, model.pw5.bn.running_mean)  # calibration leaves batch norm alone
    assert not any(m.training for m in q.modules())


def test_saved_bytes_counts_float_and_compressed():
    model = mobilenet_v1_small()
    images = torch.randn(8, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    m = outlier_backprop.saved_bytes(model, images, torch.arange(8), bits=3, ratio=0.02)
    # 27 ReLU outputs and the pooled features; all but the last ReLU output are saved twice (ReLU, next layer)
    assert m["relu_tensors"] == 28 and m["relu_saves"] == 54
    assert m["relu_float"] < m["relu_saved_float"] < 2 * m["relu_float"]
    per_value = m["relu_held"] / (m["relu_saved_float"] / 4)  # bytes per saved value, compressed
    assert 3 / 8 < per_value < 3 / 8 + 0.03 * 8 + 0.01  # codes + at most ~2% outliers at 8 bytes each
    assert m["total_float"] == m["relu_float"] + m["other_float"] and m["total_held"] < m["total_float"]


def test_ptq_script_smoke(random_checkpoint, small, capsys):
    settings = outlier_ptq.Settings(bits=(3,), ratios=(0.0, 0.02), calib_images=32, calib_batch=16, eval_images=64,
                                    seeds=(0, 1))
    out = random_checkpoint / "o.json"
    result = outlier_ptq.run(settings, splits=small, out=out)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result)) and saved["complete"] is True
    assert [(r["seed"], r["method"], r["ratio"]) for r in saved["runs"]] == [
        (seed, method, ratio) for seed in (0, 1)
        for method, ratio in ((outlier_ptq.LINEAR, None), ("outlier-aware", 0.0), ("outlier-aware", 0.02))]
    assert all(0 <= r["accuracy"] <= 1 for r in saved["runs"])
    assert all(sum(r["correct_per_batch"]) == round(64 * r["accuracy"]) for r in saved["runs"])
    # ratio 0: only activations above the calibrated (running) threshold stay in float, a tiny share
    assert saved["runs"][1]["outlier_share"] < 1e-3 < saved["runs"][2]["outlier_share"] < 0.03
    assert saved["seeds"] == [0, 1] and saved["test_images"] == 64 and 0 <= saved["float_accuracy"] <= 1
    assert saved["seconds"] > 0 and saved["cpu_seconds"] > 0 and saved["timestamp"]
    # resume: a file missing the last runs gets only those, and the seconds add up
    out.write_text(json.dumps(dict(saved, runs=saved["runs"][:4], complete=False, seconds=100.0)))
    resumed = outlier_ptq.run(settings, splits=small, out=out)
    assert "2 to go" in capsys.readouterr().out
    assert resumed["runs"][:4] == saved["runs"][:4] and resumed["complete"] and resumed["seconds"] > 100
    assert [r["accuracy"] for r in resumed["runs"]] == [r["accuracy"] for r in saved["runs"]]  # seeded


def test_ptq_settings_default_to_the_full_test_set_and_refuse_too_many_images(small):
    settings = outlier_ptq.Settings()
    assert settings.eval_images is None and len(settings.seeds) >= 3
    assert outlier_ptq.planned_runs(settings)[:2] == [(0, 4, None), (0, 4, 0.0)]
    assert len(outlier_ptq.planned_runs(settings)) == 3 * 2 * 7
    with pytest.raises(UsageError, match="5000"):
        outlier_ptq.run(outlier_ptq.Settings(eval_images=5000), splits=small, out=None)


def test_round_trip_gives_back_what_the_packed_compression_gives_back():
    x = torch.relu(torch.randn(4, 8, 16, 16, generator=torch.Generator().manual_seed(1)))
    x[0, 0, 0, :4] = torch.tensor([1e-4, 2e-4, 0.0, 9.0])  # tiny positives round up to level 1; 9.0 is an outlier
    for ratio in (0.02, 0.0):
        expected = decompress(compress_for_backward(x, bits=3, ratio=ratio))
        assert torch.equal(outlier_backprop.round_trip(x, 3, ratio), expected)
    assert torch.equal(outlier_backprop.round_trip(x, 3, 0.0) > 0, x > 0)  # the ReLU mask survives


def test_round_trip_training_step_has_the_gradients_of_the_packed_one():
    torch.manual_seed(0)
    model = mobilenet_v1_small().train()
    images, labels = torch.randn(8, 1, 32, 32), torch.arange(8)

    def grads(saving):
        model.zero_grad(set_to_none=True)
        with saving:
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    for ratio in (0.02, 0.0):
        fast = outlier_backprop.RoundTripSavedActivations(3, ratio)
        assert all(torch.equal(a, b) for a, b in zip(grads(CompressedSavedActivations(3, ratio)), grads(fast)))
        assert fast.n_rounded == 28  # each post-ReLU tensor rounded once, though most are saved twice


def test_backprop_configs_and_bad_names():
    settings = outlier_backprop.Settings(seeds=(0, 1))
    assert [outlier_backprop.config_ratio(c, settings) for c in settings.configs] == [None, 0.02, 0.0]
    assert outlier_backprop.planned_runs(settings)[:3] == [("float", 0), ("outliers", 0), ("no_outliers", 0)]
    with pytest.raises(UsageError, match="'half'"):
        outlier_backprop.planned_runs(outlier_backprop.Settings(configs=("float", "half")))


@pytest.mark.slow
def test_backprop_script_smoke(random_checkpoint, small, capsys):
    settings = outlier_backprop.Settings(steps=4, batch_size=16, eval_every=2, val_images=32, eval_images=64,
                                         memory_images=8, seeds=(0, 1))
    out = random_checkpoint / "b.json"
    result = outlier_backprop.run(settings, splits=small, out=out)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result)) and saved["complete"] is True
    runs = {(r["config"], r["seed"]): r for r in saved["runs"]}
    assert sorted(runs) == sorted((c, s) for c in ("float", "outliers", "no_outliers") for s in (0, 1))
    fp, comp, lin = runs["float", 0], runs["outliers", 0], runs["no_outliers", 0]
    assert fp["curve_steps"] == comp["curve_steps"] == [2, 4] and len(fp["losses"]) == 4
    assert fp["losses"][0] == pytest.approx(comp["losses"][0], rel=1e-6) == lin["losses"][0]  # same start, batch
    assert fp["losses"][1:] != comp["losses"][1:] != lin["losses"][1:]  # compressed gradients differ a little
    assert runs["float", 1]["losses"][0] != fp["losses"][0]  # another seed: another initialisation and batch
    assert all(0 <= r["accuracy"] <= 1 for r in saved["runs"]) and comp["ratio"] == 0.02 and lin["ratio"] == 0.0
    assert saved["memory"]["relu_held"] > 0 and saved["settings"]["steps"] == 4 and saved["timestamp"]
    # resume: a file missing the last runs gets only those, and the seconds add up
    partial = dict(saved, runs=saved["runs"][:4], complete=False, seconds=100.0)
    out.write_text(json.dumps(partial))
    resumed = outlier_backprop.run(settings, splits=small, out=out)
    assert "2 to go" in capsys.readouterr().out
    assert [(r["config"], r["seed"]) for r in resumed["runs"]] == [(r["config"], r["seed"]) for r in saved["runs"]]
    assert resumed["runs"][:4] == saved["runs"][:4] and resumed["complete"] and resumed["seconds"] > 100
