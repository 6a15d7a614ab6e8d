"""The shipped fine-tuned models of notebook 11: their packed files' sizes, the integer path against fake
quantization, and onnxruntime against the integer path (full test set from the committed results, and a
live recheck on the first test images).

The bounds are measured, with a margin (data/results/deploy_models.json, all 10,000 test images): the
integer path gave a prediction other than the fake-quant model's on 0 images at W8A8, 1 at W4A4 and 8
with the LIMPQ policy, and onnxruntime one other than the integer path's on 1 image at W8A8 and at W4A4.
The differences start at values within about 1e-6 of a half step (the fake-quant model sums in float32,
the file stores folded BN in float32), which background pixels repeat over many positions and which
low-bit layers amplify (one step of a 2-bit grid is a third of its range). The tests allow 20 images of
10,000 (0.2%), 2.5 times the worst measured count.
"""

import json

import pytest
from torch.utils.data import TensorDataset

from mpqlab.checkpoint import read_meta
from mpqlab.data import fashion_mnist_splits, repo_data_dir
from mpqlab.deploy import compare_integer, export_model, load_packed, packed_size_report
from mpqlab.deploy.onnx_qdq import onnx_logits, qdq_model
from mpqlab.errors import BitWidthError
from mpqlab.experiments.deploy_models import POLICY_NAMES, checkpoint_path, limpq_policy, load_deploy_model

RESULTS = repo_data_dir() / "results" / "deploy_models.json"
SAME_PREDICTION_BOUND = 0.998  # measured 1.0, 0.9999 and 0.9992 on all 10,000 images (module docstring)
HEADER_BYTES_PER_LAYER = 500  # the JSON header: measured 434 bytes per layer (12,136 for 28 layers)


@pytest.fixture(scope="module")
def results():
    return json.loads(RESULTS.read_text())


@pytest.fixture(scope="module")
def packed_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shipped")
    return {name: export_model(load_deploy_model(name), folder / f"{name}.safetensors") for name in POLICY_NAMES}


def test_checkpoints_are_shipped_with_their_policy():
    for name in POLICY_NAMES:
        meta = read_meta(checkpoint_path(name))
        assert meta["policy_name"] == name and meta["accuracy"] > 0.8
    limpq = read_meta(checkpoint_path("limpq"))["policy"]
    assert {n: tuple(p) for n, p in limpq.items()} == limpq_policy(4)
    assert {w for w, _ in limpq.values()} >= {2, 3, 5, 6, 8}  # odd bit-widths to pack


def test_files_are_the_cost_model_size_plus_the_stated_overhead(packed_files, results):
    for name, path in packed_files.items():
        model = load_deploy_model(name)
        size = packed_size_report(model, path)
        layers = len(load_packed(path).layers)
        channels = sum(r["shape"][0] for r in load_packed(path).layers)
        assert size["file_bytes"] == size["cost_model_bytes"] + size["overhead_bytes"]
        assert size["channel_bytes"] == 8 * channels
        assert 0 <= size["padding_bytes"] < layers
        assert size["header_bytes"] <= HEADER_BYTES_PER_LAYER * layers
        assert size["file_bytes"] == results["models"][name]["file_bytes"]  # the committed numbers are these files'


def test_integer_path_matches_fake_quant_on_the_full_test_set(results):
    for name in POLICY_NAMES:
        row = results["models"][name]
        assert row["images"] == 10_000
        assert row["same_prediction"] >= SAME_PREDICTION_BOUND, name
        assert abs(row["fake_quant_accuracy"] - row["integer_accuracy"]) <= 1 - SAME_PREDICTION_BOUND
        assert row["accuracy"] == read_meta(checkpoint_path(name))["accuracy"]  # measured on the shipped model
    for name in ("w8a8", "w4a4"):
        assert results["onnx"][name]["images"] == 10_000
        assert results["onnx"][name]["same_prediction"] >= SAME_PREDICTION_BOUND, name


def test_integer_path_matches_fake_quant_live(packed_files):
    """A live recheck of the LIMPQ model (weights at 2-8 bits, depthwise convs) on the first 500 test images."""
    x, y = fashion_mnist_splits().test.tensors
    result = compare_integer(load_deploy_model("limpq"), load_packed(packed_files["limpq"]),
                             TensorDataset(x[:500], y[:500]), progress=False)
    assert result["same_prediction"] >= 0.99
    assert result["same_codes"]["conv1.conv"] == 1.0 and result["same_codes"]["dw1.conv"] >= 0.9999


def test_onnxruntime_agrees_at_8_bits_and_refuses_3_5_6(packed_files):
    from mpqlab.deploy import IntegerModel

    x = fashion_mnist_splits().test.tensors[0][:500]
    packed = load_packed(packed_files["w8a8"])
    ort = onnx_logits(qdq_model(packed), x)
    ours = IntegerModel(packed)(x)
    assert (ort.argmax(1) == ours.argmax(1)).double().mean() >= 0.99
    with pytest.raises(BitWidthError, match="INT8, INT4, INT2"):
        qdq_model(load_packed(packed_files["limpq"]))
