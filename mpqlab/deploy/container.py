"""The packed model file: safetensors holding bit-packed weight codes, and a validating loader.

safetensors (Hugging Face) is the field's standard container for weights: an 8-byte header length, a
JSON header (tensor names, dtypes, shapes, byte offsets and free-form string metadata), then the raw
tensor bytes, with no pickled code. One file holds, per layer ``L``:

    L.codes    uint8 (ceil(params * w_bits / 8),)   weight codes q_w - q_min, bit-packed (mpqlab.deploy.pack)
    L.channel  float32 (2, C_out)                   folded BN: row 0 a_c = gamma/sigma, row 1 b_c (mpqlab.deploy.fold)

and, in the metadata, the policy and for every layer its shape, w_bits, a_bits, the two step sizes
(``w_scale``, ``a_scale``, exact decimal copies of the float32 values), zero points (0: LSQ grids are
symmetric for weights and start at 0 after a ReLU) and the SHA-256 of all tensor bytes.

Size. The cost model counts ``sum_l params_l * w_bits_l`` bits (``mpqlab.cost.model_size_bits``). The
file is larger by exactly

    overhead = 8 + header bytes                       the length field and the JSON header
             + sum_l 8 * C_out,l                      two float32 per output channel (folded BN / bias)
             + sum_l (packed_bytes_l - params_l * w_bits_l / 8)   under one byte of padding per layer

``overhead_bytes`` computes it; the tests hold the file to it byte for byte. Introduced in notebook 11.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from mpqlab.checkpoint import atomic_write_bytes
from mpqlab.deploy.fold import FoldedLayer, fold_model
from mpqlab.deploy.pack import pack_codes, packed_bytes, unpack_codes
from mpqlab.errors import CheckpointError
from mpqlab.quant.lsq import lsq_range

FORMAT = "mpqlab-packed/1"
METADATA_KEYS = ("format", "model", "policy", "layers", "sha256")


def tensors_of(layers: list[FoldedLayer]) -> dict[str, torch.Tensor]:
    """The file's tensors: packed codes and the (2, C_out) folded-BN rows of every layer."""
    tensors = {}
    for layer in layers:
        q_min, _ = lsq_range(layer.w_bits, signed=True)
        tensors[f"{layer.name}.codes"] = pack_codes(layer.codes - q_min, layer.w_bits)
        tensors[f"{layer.name}.channel"] = torch.stack([layer.channel_scale, layer.channel_shift]).float()
    return tensors


def layer_record(layer: FoldedLayer) -> dict:
    """The JSON description of one layer (everything but its tensors)."""
    return {"name": layer.name, "kind": layer.kind, "shape": list(layer.codes.shape), "w_bits": layer.w_bits,
            "w_scale": layer.w_scale, "w_zero_point": 0, "a_bits": layer.a_bits, "a_signed": layer.a_signed,
            "a_scale": layer.a_scale, "a_zero_point": 0, "stride": layer.stride, "padding": layer.padding,
            "groups": layer.groups}


def data_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors' bytes in name order (what the loader recomputes)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(tensors[name].contiguous().numpy().tobytes())
    return h.hexdigest()


def export_model(qmodel: torch.nn.Module, path, model_name: str = "mobilenet_v1_small") -> Path:
    """Fold, pack and write ``qmodel`` (an LSQ MobileNetV1 at any per-layer 2-8-bit policy) to ``path``, atomically."""
    from safetensors.torch import save

    layers = fold_model(qmodel)
    tensors = tensors_of(layers)
    compact = {"separators": (",", ":")}
    metadata = {"format": FORMAT, "model": model_name,
                "policy": json.dumps({l.name: [l.w_bits, l.a_bits] for l in layers}, **compact),
                "layers": json.dumps([layer_record(l) for l in layers], **compact),
                "sha256": data_sha256(tensors)}
    blob = save(tensors, metadata=metadata)
    path = Path(path)
    atomic_write_bytes(path, lambda f: f.write(blob))
    return path


@dataclass
class PackedModel:
    """A validated packed file: per-layer records (JSON) with their unpacked int64 codes and folded BN."""

    model: str
    layers: list[dict]  # layer_record()s, plus "codes" (int64, the weight's shape) and "channel" ((2, C_out))
    policy: dict[str, tuple[int, int]]


def header_bytes(path) -> int:
    """Bytes before the tensor data: the 8-byte length field plus the JSON header."""
    with open(path, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


def _expect(ok: bool, path, message: str) -> None:
    if not ok:
        raise CheckpointError(f"packed model {path}: {message}")


def check_record(path, record: dict, tensors: dict[str, torch.Tensor]) -> None:
    """CheckpointError unless one layer's record and tensors agree (bits, shapes, scales, byte counts)."""
    name = record.get("name")
    for key in ("kind", "shape", "w_bits", "w_scale", "a_bits", "a_signed", "a_scale", "stride", "padding", "groups"):
        _expect(key in record, path, f"layer {name!r} has no {key!r} in its metadata")
    for key in ("w_bits", "a_bits"):
        _expect(isinstance(record[key], int) and 2 <= record[key] <= 8, path,
                f"layer {name!r}: {key} must be an integer from 2 to 8, got {record[key]!r}")
    for key in ("w_scale", "a_scale"):
        value = record[key]
        _expect(isinstance(value, float) and math.isfinite(value) and value > 0, path,
                f"layer {name!r}: {key} must be a positive finite number, got {value!r}")
    _expect(record.get("w_zero_point") == 0 and record.get("a_zero_point") == 0, path,
            f"layer {name!r}: LSQ zero points are 0, got {record.get('w_zero_point')!r}, {record.get('a_zero_point')!r}")
    shape = record["shape"]
    _expect(isinstance(shape, list) and len(shape) in (2, 4) and all(isinstance(d, int) and d > 0 for d in shape),
            path, f"layer {name!r}: weight shape must be 2 or 4 positive integers, got {shape!r}")
    codes, channel = tensors.get(f"{name}.codes"), tensors.get(f"{name}.channel")
    _expect(codes is not None and channel is not None, path, f"layer {name!r} is missing its codes or channel tensor")
    count = math.prod(shape)
    want = packed_bytes(count, record["w_bits"])
    _expect(codes.dtype == torch.uint8 and tuple(codes.shape) == (want,), path,
            f"layer {name!r}: {count} codes of {record['w_bits']} bits take {want} uint8 bytes, "
            f"found {codes.dtype} of shape {tuple(codes.shape)}")
    _expect(channel.dtype == torch.float32 and tuple(channel.shape) == (2, shape[0]), path,
            f"layer {name!r}: the channel tensor must be float32 of shape (2, {shape[0]}), "
            f"found {channel.dtype} {tuple(channel.shape)}")
    _expect(bool(torch.isfinite(channel).all()), path, f"layer {name!r}: the folded BN holds NaN or Inf")


def load_packed(path) -> PackedModel:
    """Read and validate a packed file: format, checksum, every layer's bits and shapes, the policy.

    Any mismatch raises CheckpointError naming the file, the layer and what was expected.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"packed model not found: {path}")
    try:
        raw = path.read_bytes()
        tensors = load(raw)
        (length,) = struct.unpack("<Q", raw[:8])
        metadata = json.loads(raw[8:8 + length]).get("__metadata__") or {}
    except (SafetensorError, ValueError, OSError, struct.error) as err:
        raise CheckpointError(f"packed model {path} is not a readable safetensors file ({err})") from None
    missing = [k for k in METADATA_KEYS if k not in metadata]
    _expect(not missing, path, f"metadata lacks {missing}")
    _expect(metadata["format"] == FORMAT, path, f"format is {metadata['format']!r}, expected {FORMAT!r}")
    actual = data_sha256(tensors)
    _expect(actual == metadata["sha256"], path,
            f"SHA-256 of the tensors {actual[:12]}... does not match the recorded {metadata['sha256'][:12]}...; "
            "the file is corrupt")
    try:
        records, policy = json.loads(metadata["layers"]), json.loads(metadata["policy"])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"packed model {path}: metadata is not valid JSON ({err})") from None
    _expect(isinstance(records, list) and records, path, "metadata 'layers' must be a non-empty list")
    names = [r.get("name") for r in records]
    expected_tensors = {f"{n}.{part}" for n in names for part in ("codes", "channel")}
    _expect(set(tensors) == expected_tensors, path,
            f"tensors {sorted(set(tensors) ^ expected_tensors)[:4]} do not match the layer list")
    layers = []
    for record in records:
        check_record(path, record, tensors)
        name = record["name"]
        _expect(policy.get(name) == [record["w_bits"], record["a_bits"]], path,
                f"layer {name!r}: the policy says {policy.get(name)!r}, the layer [{record['w_bits']}, "
                f"{record['a_bits']}]")
        q_min, _ = lsq_range(record["w_bits"], signed=True)
        count = math.prod(record["shape"])
        codes = unpack_codes(tensors[f"{name}.codes"], record["w_bits"], count) + q_min
        layers.append({**record, "codes": codes.reshape(record["shape"]), "channel": tensors[f"{name}.channel"]})
    _expect(set(policy) == set(names), path, f"the policy names {sorted(set(policy) ^ set(names))[:4]} "
                                             "that the layer list does not (or the reverse)")
    return PackedModel(model=metadata["model"], layers=layers, policy={n: tuple(p) for n, p in policy.items()})


def overhead_bytes(path) -> dict:
    """The file's bytes beyond the cost model's ``sum params * w_bits / 8``, term by term (see the module doc)."""
    packed = load_packed(path)
    params = [math.prod(r["shape"]) for r in packed.layers]
    cost_bits = sum(p * r["w_bits"] for p, r in zip(params, packed.layers))
    header = header_bytes(path)
    channels = sum(8 * r["shape"][0] for r in packed.layers)
    padding = sum(packed_bytes(p, r["w_bits"]) for p, r in zip(params, packed.layers)) - cost_bits / 8
    return {"cost_model_bits": cost_bits, "header_bytes": header, "channel_bytes": channels,
            "padding_bytes": padding, "overhead_bytes": header + channels + padding}


def packed_size_report(qmodel: torch.nn.Module, path, input_size=(1, 1, 32, 32)) -> dict:
    """Sizes in bytes: the file, the cost model's ``size_bits / 8`` for the model's policy, float32, and the overhead."""
    from mpqlab.cost import layer_table, model_size_bits
    from mpqlab.quant.policy import model_policy

    table = layer_table(qmodel, input_size)
    cost_bytes = model_size_bits(table, model_policy(qmodel)) / 8
    parts = overhead_bytes(path)
    return {"file_bytes": Path(path).stat().st_size, "cost_model_bytes": cost_bytes,
            "float32_bytes": 4 * int(table.params.sum()),
            **{k: v for k, v in parts.items() if k != "cost_model_bits"}}
