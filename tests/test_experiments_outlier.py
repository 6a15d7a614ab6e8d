import json

import pytest
import torch
from torch.utils.data import TensorDataset

from mpqlab.checkpoint import save_checkpoint
from mpqlab.data import Splits
from mpqlab.experiments import outlier_backprop, outlier_ptq
from mpqlab.models import mobilenet_v1_small
from mpqlab.quant.outlier import OutlierQuantizer


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


def test_ptq_script_smoke(random_checkpoint, small):
    settings = outlier_ptq.Settings(bits=(3,), ratios=(0.0, 0.02), calib_images=32, calib_batch=16, eval_images=64)
    out = random_checkpoint / "o.json"
    result = outlier_ptq.run(settings, splits=small, out=out)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    assert [(r["method"], r["ratio"]) for r in saved["runs"]] == [
        ("linear, per-channel (notebook 01)", None), ("outlier-aware", 0.0), ("outlier-aware", 0.02)]
    assert all(0 <= r["accuracy"] <= 1 for r in saved["runs"])
    # ratio 0: only activations above the calibrated (running) threshold stay in float, a tiny share
    assert saved["runs"][1]["outlier_share"] < 1e-3 < saved["runs"][2]["outlier_share"] < 0.03
    assert saved["seed"] == 0 and saved["seconds"] > 0 and saved["timestamp"]


@pytest.mark.slow
def test_backprop_script_smoke(random_checkpoint, small):
    settings = outlier_backprop.Settings(steps=4, batch_size=16, eval_every=2, val_images=32, memory_images=8)
    out = random_checkpoint / "b.json"
    result = outlier_backprop.run(settings, splits=small, out=out)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    fp, comp = saved["runs"]["float"], saved["runs"]["compressed"]
    assert fp["curve_steps"] == comp["curve_steps"] == [2, 4] and len(fp["losses"]) == 4
    assert fp["losses"][0] == pytest.approx(comp["losses"][0], rel=1e-6)  # same start, same first batch
    assert fp["losses"][1:] != comp["losses"][1:]  # compressed gradients differ a little
    assert saved["memory"]["relu_held"] > 0 and saved["settings"]["steps"] == 4 and saved["timestamp"]
