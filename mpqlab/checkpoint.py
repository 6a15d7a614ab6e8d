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


def _write_temp(path: Path, write) -> Path:
    """Call ``write(file_object)`` on a new temporary file next to ``path``; return the flushed file's path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates owner-only files; results are meant to be shared
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(file_object)`` on a temporary file next to ``path``, then rename it onto ``path``."""
    path = Path(path)
    tmp = _write_temp(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    """Write ``obj`` as indented JSON atomically."""
    atomic_write_bytes(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def _plain_number(value):
    """``json.dumps``' fallback for metadata: NumPy and 0-d torch scalars become Python numbers."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # np.float32(0.9), torch.tensor(3)
        return value.item()
    raise TypeError(f"{type(value).__name__} {value!r}")


def meta_json(meta: dict | None) -> str:
    """``meta`` as indented JSON text, or CheckpointError naming what JSON cannot hold."""
    if meta is not None and not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint metadata must be a dict, got {type(meta).__name__}")
    try:
        return json.dumps(dict(meta or {}), indent=2, default=_plain_number) + "\n"
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint metadata must hold plain numbers, strings, lists and dicts with "
                              f"string keys; cannot write {err}") from None


def save_checkpoint(path, state_dict: dict, meta: dict | None = None) -> Path:
    """Save ``state_dict`` to ``path`` and its metadata plus SHA-256 to ``path`` with suffix .json.

    Both files are written to temporaries first and renamed only once both are complete, so a save
    that fails (metadata JSON cannot hold, a full disk) leaves the previous checkpoint as it was.
    """
    path = Path(path)
    meta_path = path.with_suffix(".json")
    meta_json(meta)  # bad metadata fails here, before anything is written
    tensors = {k: v.detach().cpu() for k, v in state_dict.items()}
    pt_tmp = _write_temp(path, lambda f: torch.save(tensors, f))
    json_tmp = None
    try:
        text = meta_json({**(meta or {}), "sha256": sha256_of(pt_tmp), "keys": len(tensors)})
        json_tmp = _write_temp(meta_path, lambda f: f.write(text.encode()))
        os.replace(pt_tmp, path)
        os.replace(json_tmp, meta_path)
    except BaseException:
        for tmp in (pt_tmp, json_tmp):
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        raise
    return path


def read_meta(path) -> dict:
    """The metadata saved beside checkpoint ``path``."""
    meta_path = Path(path).with_suffix(".json")
    if not meta_path.is_file():
        raise CheckpointError(f"checkpoint metadata not found: {meta_path} (it is written beside the .pt file)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint metadata {meta_path} is not valid JSON: {err}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint metadata {meta_path} holds a JSON {type(meta).__name__}, not an object "
                              f"with sha256 and keys; restore it from git or save the checkpoint again.")
    return meta


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
    """Load ``state`` into ``model``, naming missing and unexpected keys, or tensors of the wrong shape.

    On a shape error ``model`` may already hold some of the checkpoint's tensors: build it afresh.
    """
    name = type(model).__name__
    if not isinstance(state, dict):
        raise CheckpointError(f"{source} does not hold a state dict for {name} (found {type(state).__name__})")
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{source} does not fit {name}: missing keys {missing[:5]}, "
                              f"unexpected keys {unexpected[:5]}")
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError, KeyError) as err:
        # Same keys, other shapes (a sibling model: other width or classes): torch lists every
        # "size mismatch for <key>: ..." on its own line; a few of them, on one line, name the problem.
        # Shapes are not compared up front: per-channel quantizer scales take the saved shape.
        lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()] or [str(err)]
        raise CheckpointError(f"{source} does not fit {name}, it was saved from another model: "
                              f"{' '.join(lines[:3])}{' ...' if len(lines) > 3 else ''}") from None
    return model


def load_pretrained(name: str, device: str = "cpu"):
    """A shipped full-precision model ('mobilenet_v1_small', 'resnet20' or 'mobilenet_v3_small'), in eval mode on ``device``."""
    from mpqlab.models import build_model

    model = build_model(name)
    path = checkpoint_dir() / f"{name}.pt"
    load_into(model, load_checkpoint(path), source=str(path))
    return model.to(device).eval()
