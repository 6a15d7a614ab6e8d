import json

import pytest
import torch

from torch.utils.data import TensorDataset

from mpqlab.checkpoint import save_checkpoint
from mpqlab.data import Splits
from mpqlab.errors import BitWidthError, PolicyError, TensorValueError
from mpqlab.experiments.precision_highway import Settings, run, skip_bits_of
from mpqlab.highway import (
    HighwayBlock, block_outputs, branch_and_skip, highway_resnet, relative_errors, residual_blocks,
)
from mpqlab.models import mobilenet_v1_small, resnet20
from mpqlab.quant.layers import QuantConv2d
from mpqlab.quant.ptq import calibrate
from mpqlab.quant.quantizer import FullPrecision
from mpqlab.quant.uniform import UniformQuantizer


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = resnet20().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so that blocks differ from one another
        for bn in (mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)):
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
    return m


@pytest.fixture(scope="module")
def images():
    return torch.randn(8, 1, 32, 32, generator=torch.Generator().manual_seed(1))


def test_float_highway_with_float_branches_is_the_model(model, images):
    q = highway_resnet(model, 8, None)
    for _, blk in residual_blocks(q):
        blk.conv1.a_quantizer = blk.conv2.a_quantizer = FullPrecision()
        blk.conv1.w_quantizer = blk.conv2.w_quantizer = FullPrecision()
    q.conv1.a_quantizer = q.conv1.w_quantizer = q.fc.a_quantizer = q.fc.w_quantizer = FullPrecision()
    with torch.no_grad():
        assert torch.allclose(q.eval()(images), model(images), atol=1e-5)
    assert relative_errors(model, q, images) == pytest.approx([0.0] * 9, abs=1e-5)


def test_layout_names_and_shared_weights(model):
    q = highway_resnet(model, 3, 8)
    blocks = residual_blocks(q)
    assert [name for name, _ in blocks] == [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
    assert all(isinstance(blk, HighwayBlock) for _, blk in blocks)
    blk = q.layer2[0]
    assert isinstance(blk.conv1, QuantConv2d) and blk.conv1.w_quantizer.bits == 3 and blk.conv1.a_quantizer.bits == 3
    assert isinstance(blk.skip_quantizer, UniformQuantizer) and blk.skip_quantizer.bits == 8
    assert q.conv1.w_quantizer.bits == 8 and q.fc.a_quantizer.bits == 8  # first and last layers
    assert torch.equal(blk.conv1.weight, model.layer2[0].conv1.weight)  # a copy with the same values
    assert isinstance(highway_resnet(model, 3, None).layer1[0].skip_quantizer, FullPrecision)
    assert not any(isinstance(m, HighwayBlock) for m in model.modules())  # the float model is untouched


def test_everything_quantized_reads_one_grid_on_both_paths(model, images):
    """With skip_bits == bits, Q_s and Q_b calibrate on the same x and must agree exactly."""
    q = calibrate(highway_resnet(model, 3, 3), images)
    seen = {}
    blk = q.layer1[1]
    hooks = [blk.skip_quantizer.register_forward_hook(lambda m, i, o: seen.setdefault("skip", o)),
             blk.conv1.a_quantizer.register_forward_hook(lambda m, i, o: seen.setdefault("branch", o))]
    with torch.no_grad():
        q(images)
    for h in hooks:
        h.remove()
    assert torch.equal(seen["skip"], seen["branch"])
    assert len(torch.unique(seen["skip"])) <= 8


def test_quantizing_the_skip_adds_error(model, images):
    errors = {}
    for skip in (2, 8, None):
        q = calibrate(highway_resnet(model, 2, skip), images[:4])
        errors[skip] = relative_errors(model, q, images[:4])
    assert all(e > 0 for e in errors[None])
    assert errors[2][-1] > errors[8][-1]  # a 2-bit skip loses more than an 8-bit one
    assert errors[8] == pytest.approx(errors[None], rel=0.05, abs=0.01)  # 8 bits is nearly float


def test_block_outputs_and_branch_sizes(model, images):
    outs = block_outputs(model, images)
    assert [tuple(o.shape[1:]) for o in outs] == [(16, 32, 32)] * 3 + [(32, 16, 16)] * 3 + [(64, 8, 8)] * 3
    rows = branch_and_skip(model, images)
    assert len(rows) == 9 and all(r["max_skip"] >= 0 and r["rms_branch"] > 0 for r in rows)
    with torch.no_grad():
        x_in = torch.relu(model.bn1(model.conv1(images)))  # input of the first block, its skip is the identity
    assert rows[0]["max_skip"] == pytest.approx(float(x_in.max()), rel=1e-5)


def test_bad_inputs(model):
    with pytest.raises(BitWidthError):
        highway_resnet(model, 0, None)
    with pytest.raises(BitWidthError, match="skip_bits"):
        highway_resnet(model, 3, 40)
    with pytest.raises(PolicyError, match="residual blocks"):
        highway_resnet(mobilenet_v1_small(), 3, None)
    with pytest.raises(TensorValueError):
        block_outputs(model, torch.tensor([]))
    assert [skip_bits_of(s, 3) for s in ("quantized", "8", "float")] == [3, 8, None]


@pytest.mark.slow
def test_script_smoke_on_a_tiny_budget(tmp_path, monkeypatch, splits):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "resnet20.pt", resnet20().state_dict(), {"note": "random init"})
    monkeypatch.setenv("MPQLAB_CHECKPOINTS", str(tmp_path))
    settings = Settings(bits=(2,), skips=("quantized", "float"), steps=2, batch_size=8, calib_images=16,
                        eval_images=50, curve_images=20, seeds=(0, 1))
    parts = (splits.train, splits.val, splits.test)
    small = Splits(*(TensorDataset(*(t[:64] for t in part.tensors)) for part in parts))
    out = tmp_path / "ph.json"
    result = run(settings, splits=small, out=out)  # a 64-image training set keeps fine_tune's BN re-estimation quick
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    runs = [(r["bits"], r["skip"], r["skip_bits"], r["seed"]) for r in saved["runs"]]
    assert runs == [(2, "quantized", 2, 0), (2, "float", None, 0), (2, "quantized", 2, 1), (2, "float", None, 1)]
    for row in saved["runs"]:
        assert 0.0 <= row["start_accuracy"] <= 1.0 and 0.0 <= row["accuracy"] <= 1.0 and row["fine_tune_steps"] == 2
    assert saved["settings"]["steps"] == 2 and saved["seeds"] == [0, 1] and saved["complete"]
    assert saved["seconds"] > 0 and saved["timestamp"]
    # a stopped run continues: drop the last run, and only that one is run again
    partial = dict(saved, runs=saved["runs"][:-1], complete=False)
    out.write_text(json.dumps(partial))
    resumed = run(settings, splits=small, out=out)
    assert resumed["runs"][:-1] == saved["runs"][:-1] and len(resumed["runs"]) == 4 and resumed["complete"]
