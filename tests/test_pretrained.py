"""The shipped checkpoints load and still score the test accuracy recorded when they were made."""

import pytest

from mpqlab.checkpoint import checkpoint_dir, load_pretrained, read_meta
from mpqlab.data import make_loaders
from mpqlab.train import evaluate

MIN_ACCURACY = {"mobilenet_v1_small": 0.90, "resnet20": 0.90, "mobilenet_v3_small": 0.90}


@pytest.mark.parametrize("name", ["mobilenet_v1_small", "resnet20", "mobilenet_v3_small"])
def test_checkpoint_accuracy_matches_its_log(name, splits):
    meta = read_meta(checkpoint_dir() / f"{name}.pt")
    acc = evaluate(load_pretrained(name), make_loaders(splits)["test"])
    # Another CPU sums floats in another order and can flip a near-tie: allow 5 of 10,000 images, far below
    # what a wrong or damaged checkpoint would cost.
    assert acc == pytest.approx(meta["test_acc"], abs=5e-4)
    assert acc >= MIN_ACCURACY[name]
    assert meta["seed"] == 0 and meta["epochs"] == len(meta["val_acc"])
