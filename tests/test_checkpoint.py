import json

import numpy as np
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


def test_checkpoint_of_a_sibling_model_names_the_file_and_the_model(tmp_path):
    """Same keys, other shapes (width 0.5 vs 0.25): a CheckpointError, not torch's size-mismatch RuntimeError."""
    path = save_checkpoint(tmp_path / "wide.pt", mobilenet_v1_small(width=0.5).state_dict(), {})
    with pytest.raises(CheckpointError, match=r"wide\.pt does not fit MobileNetV1.*size mismatch"):
        load_into(mobilenet_v1_small(), load_checkpoint(path), source=str(path))
    with pytest.raises(CheckpointError, match="ResNet20.*found list"):
        load_into(resnet20(), [1, 2])


@pytest.mark.parametrize("text, found", [("[1, 2]", "list"), ('"sha"', "str"), ("null", "NoneType")])
def test_metadata_that_is_not_an_object_is_a_checkpoint_error(tmp_path, text, found):
    path = save_checkpoint(tmp_path / "resnet20.pt", resnet20().state_dict(), {})
    path.with_suffix(".json").write_text(text)
    with pytest.raises(CheckpointError, match=rf"resnet20\.json holds a JSON {found}"):
        load_checkpoint(path)


def test_numpy_scalars_in_metadata_are_written_as_numbers(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", resnet20().state_dict(),
                           {"acc": np.float32(0.5), "epochs": np.int64(3), "loss": torch.tensor(0.25)})
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["acc"] == 0.5 and meta["epochs"] == 3 and meta["loss"] == 0.25
    load_checkpoint(path)


@pytest.mark.parametrize("meta, text", [
    ({"weights": np.zeros(3)}, "ndarray"),
    ({"fn": print}, "builtin_function_or_method"),
    ({(1, 2): "tuple key"}, "keys"),
    ([("acc", 0.9)], "must be a dict"),
])
def test_a_failed_save_leaves_the_previous_checkpoint_loadable(tmp_path, meta, text):
    old = resnet20().state_dict()
    path = save_checkpoint(tmp_path / "m.pt", old, {"run": 1})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(CheckpointError, match=text):
        save_checkpoint(path, {k: v + 1 for k, v in old.items()}, meta)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temporary left behind either
    state = load_checkpoint(path)
    assert all(torch.equal(state[k], v) for k, v in old.items())


def test_a_save_failing_while_writing_the_tensors_changes_nothing(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", resnet20().state_dict(), {"run": 1})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def full_disk(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, mobilenet_v1_small().state_dict(), {"run": 2})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
