"""python -m mpqlab indicators / finetune in one process: files the search accepts, resuming, clear errors."""

import json

import pytest
import torch

from mpqlab.__main__ import main
from mpqlab.image_folder import synthetic_image_folder
from mpqlab.limpq.indicators import load_indicators
from mpqlab.limpq.joint import lsq_policy_model
from mpqlab.model_zoo import resolve_model
from mpqlab.pipeline import read_policy, resume_path

MODEL = "mpqlab:mobilenet_v1_small"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return synthetic_image_folder(tmp_path_factory.mktemp("images"), classes=3, train_per_class=8, val_per_class=2)


def indicators_args(folder, out, *extra):
    return ["indicators", "--model", MODEL, "--data", str(folder), "--image-size", "16", "--batch-size", "4",
            "--bits", "2", "4", "6", "--out", str(out), *extra]


def scores(path):
    ind = load_indicators(path)
    return ind.weight_indicators, ind.act_indicators


def test_indicators_then_search_then_finetune(folder, tmp_path, capsys):
    out = tmp_path / "ind.json"
    assert main(indicators_args(folder, out, "--max-steps", "2")) == 0
    ind = load_indicators(out)
    assert ind.layer_names[0] == "dw1.conv" and set(ind.fixed_layers) == {"conv1.conv", "fc"}
    assert ind.layer_macs["dw1.conv"] == 16 * 16 * 8 * 9  # 16 px maps, 8 channels, 3x3 depthwise
    capsys.readouterr()
    assert main(["search", "--indicators", str(out), "--bits", "6", "4", "2", "--wb", "4", "--ab", "4"]) == 0
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(capsys.readouterr().out)
    policy = read_policy(policy_file)
    assert policy["conv1.conv"] == (8, 8) and len(policy) == 28
    model_file = tmp_path / "model.pt"
    assert main(["finetune", "--model", MODEL, "--data", str(folder), "--image-size", "16", "--batch-size", "4",
                 "--policy", str(policy_file), "--max-steps", "2", "--out", str(model_file)]) == 0
    qmodel = lsq_policy_model(resolve_model(MODEL, num_classes=3, in_channels=3), policy)
    qmodel.load_state_dict(torch.load(model_file, weights_only=True))
    meta = json.loads(model_file.with_suffix(".json").read_text())
    assert 0 <= meta["val_accuracy"] <= 1 and meta["steps"] == 2


def test_killed_run_resumes_to_the_same_indicators(folder, tmp_path):
    whole, parts = tmp_path / "whole.json", tmp_path / "parts.json"
    assert main(indicators_args(folder, whole, "--max-steps", "3", "--checkpoint-every", "1")) == 0
    assert main(indicators_args(folder, parts, "--max-steps", "3", "--checkpoint-every", "1",
                                "--stop-after-steps", "2")) == 3  # killed after step 2: no indicator file
    assert not parts.exists() and resume_path(parts).exists()
    assert main(indicators_args(folder, parts, "--max-steps", "3", "--checkpoint-every", "1", "--resume")) == 0
    assert scores(parts) == scores(whole)  # bit for bit: same batches, crops, random passes and Adam state
    assert not resume_path(parts).exists()  # a finished run removes its resume file


def test_resume_refuses_other_settings_and_missing_files(folder, tmp_path, capsys):
    out = tmp_path / "ind.json"
    assert main(indicators_args(folder, out, "--max-steps", "2", "--stop-after-steps", "1",
                                "--checkpoint-every", "1")) == 3
    assert main(indicators_args(folder, out, "--max-steps", "2", "--lr", "0.5", "--resume")) == 2
    assert "other settings (lr)" in capsys.readouterr().err
    assert main(indicators_args(folder, tmp_path / "new.json", "--resume")) == 2
    assert "no resume file" in capsys.readouterr().err


def test_clear_errors(folder, tmp_path, capsys):
    cases = [
        (indicators_args(folder, tmp_path / "a.json", "--batch-size", "0"), "--batch-size must be at least 1"),
        (indicators_args(tmp_path / "missing", tmp_path / "a.json"), "no such folder"),
        (indicators_args(folder, tmp_path / "a.json", "--batch-size", "64"), "larger than this process's share"),
        (indicators_args(folder, tmp_path / "a.json", "--min-step-fraction", "1.5"), "--min-step-fraction must be"),
        (["indicators", "--model", MODEL, "--image-size", "64", "--out", "x.json"], "Fashion-MNIST is 32x32"),
        (["finetune", "--model", MODEL, "--data", str(folder), "--policy", str(tmp_path / "none.json"),
          "--out", "m.pt"], "--policy file not found"),
    ]
    if not torch.cuda.is_available():
        cases.append((indicators_args(folder, tmp_path / "a.json", "--device", "cuda"), "sees no GPU"))
    for argv, message in cases:
        assert main(argv) == 2
        assert message in capsys.readouterr().err


def test_torchvision_model_on_the_bundled_fashion_mnist(tmp_path):
    out = tmp_path / "ind.json"
    assert main(["indicators", "--model", "torchvision:resnet18", "--batch-size", "2", "--max-steps", "1",
                 "--bits", "2", "4", "--out", str(out)]) == 0  # grey images repeated to the 3 channels it reads
    ind = load_indicators(out)
    assert "layer2.0.downsample.0" in ind.layer_names and set(ind.fixed_layers) == {"conv1", "fc"}
