"""Saving and loading model checkpoints safely.

- Written atomically: to a temporary file in the same folder, then renamed, so a crash never
  leaves half a checkpoint behind.
- Loaded with ``torch.load(..., weights_only=True)``: a checkpoint holds tensors and plain data,
  never pickled code.
- Each ``NAME.pt`` has a ``NAME.json`` beside it with its SHA-256 and how it was made (seed,
  epochs, time, accuracy); a file whose checksum or keys do not match raises ``CheckpointError``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from mpqlab.errors import CheckpointError


def checkpoint_dir() -> Path:
    """``data/checkpoints`` of this checkout, or ``$MPQLAB_CHECKPOINTS``."""
    if os.environ.get("MPQLAB_CHECKPOINTS"):
        return Path(os.environ["MPQLAB_CHECKPOINTS"])
    return Path(__file__).resolve().parent.parent / "data" / "checkpoints"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(file_object)`` on a temporary file next to ``path``, then rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates owner-only files; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    """Write ``obj`` as indented JSON atomically."""
    atomic_write_bytes(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def save_checkpoint(path, state_dict: dict, meta: dict | None = None) -> Path:
    """Save ``state_dict`` to ``path`` and its metadata plus SHA-256 to ``path`` with suffix .json."""
    path = Path(path)
    tensors = {k: v.detach().cpu() for k, v in state_dict.items()}
    atomic_write_bytes(path, lambda f: torch.save(tensors, f))
    info = dict(meta or {})
    info["sha256"] = sha256_of(path)
    info["keys"] = len(tensors)
    atomic_write_json(path.with_suffix(".json"), info)
    return path


def read_meta(path) -> dict:
    """The metadata saved beside checkpoint ``path``."""
    meta_path = Path(path).with_suffix(".json")
    if not meta_path.is_file():
        raise CheckpointError(f"checkpoint metadata not found: {meta_path} (it is written beside the .pt file)")
    try:
        return json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"checkpoint metadata {meta_path} is not valid JSON: {err}") from None


def load_checkpoint(path, verify: bool = True) -> dict:
    """Load a state dict with ``weights_only=True``; with ``verify``, check the SHA-256 from the metadata first."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}. Shipped checkpoints live in data/checkpoints/; "
                              "recreate them with `python -m mpqlab.pretrain --model all`.")
    if verify:
        expected = read_meta(path).get("sha256")
        actual = sha256_of(path)
        if expected != actual:
            raise CheckpointError(f"checkpoint {path} is corrupt: SHA-256 {actual[:12]}... does not match "
                                  f"the recorded {str(expected)[:12]}...; restore it from git or retrain it.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for damaged files
        raise CheckpointError(f"checkpoint {path} could not be read ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict (found {type(state).__name__})")
    return state


def load_into(model: torch.nn.Module, state: dict, source: str = "checkpoint") -> torch.nn.Module:
    """Load ``state`` into ``model``, naming missing and unexpected keys if they do not match."""
    own = set(model.state_dict())
    missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
    if missing or unexpected:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: missing keys {missing[:5]}, "
                              f"unexpected keys {unexpected[:5]}")
    model.load_state_dict(state)
    return model


def load_pretrained(name: str, device: str = "cpu"):
    """A shipped full-precision model ('mobilenet_v1_small', 'resnet20' or 'mobilenet_v3_small'), in eval mode on ``device``."""
    from mpqlab.models import build_model

    model = build_model(name)
    path = checkpoint_dir() / f"{name}.pt"
    load_into(model, load_checkpoint(path), source=str(path))
    return model.to(device).eval()
