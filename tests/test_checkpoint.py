import json

import pytest
import torch

from mpqlab.checkpoint import load_checkpoint, load_into, save_checkpoint
from mpqlab.errors import CheckpointError
from mpqlab.models import mobilenet_v1_small, resnet20


def test_round_trip_and_metadata(tmp_path):
    model = mobilenet_v1_small()
    path = save_checkpoint(tmp_path / "m.pt", model.state_dict(), {"epochs": 1})
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["epochs"] == 1 and len(meta["sha256"]) == 64
    state = load_checkpoint(path)
    fresh = load_into(mobilenet_v1_small(), state)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    assert not list(tmp_path.glob("*.tmp"))  # the temporary file was renamed away


def test_corrupt_and_mismatched_checkpoints(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", resnet20().state_dict(), {})
    with pytest.raises(CheckpointError, match="does not fit MobileNetV1: missing keys"):
        load_into(mobilenet_v1_small(), load_checkpoint(path))
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt: SHA-256"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="could not be read"):
        load_checkpoint(path, verify=False) if path.write_bytes(b"garbage") else None
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_loading_is_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(CheckpointError, match="could not be read"):
        load_checkpoint(path, verify=False)
