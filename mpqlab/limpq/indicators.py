"""LIMPQ importance indicators on disk: one JSON file per model, loaded, validated and saved.

LIMPQ (Tang et al., ECCV 2022) learns one *importance indicator* per layer and per bit-width: the
learned step size of the layer's LSQ quantizer at that bit-width. A file holds them for weights and
for activations, plus what the search needs to count cost (written for ResNet-50 by LIMPQ's release):

    {"layer_names":       ["layer1.0.conv1", ...],            # the searchable layers, in order
     "weight_indicators": {"layer1.0.conv1": {"6": 0.022, "5": 0.026, ...}, ...},   # s_w[l][b]
     "act_indicators":    {...},                               # s_a[l][b], same shape
     "layer_macs":        {"layer1.0.conv1": 12845056, ...},   # multiply-accumulates per image
     "layer_params":      {"layer1.0.conv1": 4096, ...},       # weight count
     "fixed_layers":      {"conv1": {"macs": ..., "params": ..., "w_bits": 8, "a_bits": 8}, ...}}

``fixed_layers`` (optional) are not searched; they count in the model size at their own bits.
Other keys (``source``, ``notes``, ...) are ignored on load. Bit-widths are JSON strings on disk and
ints in memory. The LIMPQ notebook introduces the format; the joint-training script writes it.
"""

from __future__ import annotations

import json
import math
import numbers
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mpqlab.errors import DataFileError

REQUIRED_KEYS = ("layer_names", "weight_indicators", "act_indicators", "layer_macs", "layer_params")


@dataclass(frozen=True)
class FixedLayer:
    """A layer the search leaves alone (LIMPQ: the first conv and the classifier, at 8 bits)."""

    macs: int
    params: int
    w_bits: int = 8  # LIMPQ keeps the first and last layers at 8 bits
    a_bits: int = 8


@dataclass
class Indicators:
    """Everything the search reads; see the module docstring for the meaning of each field."""

    layer_names: list[str]
    weight_indicators: dict[str, dict[int, float]]  # s_w[layer][bits]
    act_indicators: dict[str, dict[int, float]]  # s_a[layer][bits]
    layer_macs: dict[str, int]
    layer_params: dict[str, int]
    fixed_layers: dict[str, FixedLayer] = field(default_factory=dict)

    def total_params(self) -> int:
        """Weight count of the whole model, searchable and fixed layers."""
        return sum(self.layer_params.values()) + sum(f.params for f in self.fixed_layers.values())


# At most a trillion MACs or weights in one layer: far above any real layer (ResNet-50's largest has
# about 1.2e8 MACs per image), and small enough that BitOps (x 16 x 16 bits) stay below 2**53, so
# the solver's floating-point rows hold them exactly. Larger values are typos or units gone wrong.
MAX_COUNT = 10**12


def _fail(where: str, message: str) -> DataFileError:
    return DataFileError(f"{where}: {message}")


def _show(value) -> str:
    """``repr(value)``, kept short: a 400-digit integer is shown as its size, long reprs are cut."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and abs(int(value)) >= 10**30:
        return f"an integer of about 10**{int(abs(int(value)).bit_length() * math.log10(2))}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _finite(value) -> bool:
    """A real number (not a bool) that a float holds finitely; huge ints are not (float() would overflow)."""
    if type(value) is float:  # the common case, without the slow abstract-class checks below
        return math.isfinite(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _count(value, where: str, what: str) -> int:
    """A positive integer up to MAX_COUNT (JSON ints, or floats like 4096.0)."""
    whole = isinstance(value, numbers.Integral) or (_finite(value) and float(value).is_integer())
    if isinstance(value, bool) or not whole or not 0 < int(value) <= MAX_COUNT:
        raise _fail(where, f"{what} must be a positive integer up to {MAX_COUNT:.0e}, got {_show(value)}")
    return int(value)


def _bits(value, where: str, what: str) -> int:
    """A bit-width 1..32 given as an int or a string like "4" (32 = full precision)."""
    try:
        bits = value if type(value) is int else (  # the common case first: checked on every solve
            int(value) if isinstance(value, (numbers.Integral, str)) and not isinstance(value, bool) else None)
    except ValueError:
        bits = None
    if bits is None or not 1 <= bits <= 32:
        raise _fail(where, f"{what} must be a bit-width from 1 to 32, got {_show(value)}")
    return bits


def _per_layer(raw: dict, key: str, names: list[str], where: str) -> dict:
    """``raw[key]`` as a dict with exactly the searchable layers as keys."""
    table = raw[key]
    if not isinstance(table, dict):
        raise _fail(where, f"{key!r} must be an object {{layer: ...}}, got {type(table).__name__}")
    known = set(names)
    missing = [n for n in names if n not in table]
    extra = [n for n in table if n not in known]
    if missing or extra:
        raise _fail(where, f"{key!r} does not match layer_names: missing {missing}, not in layer_names {extra}")
    return table


def _scores(raw: dict, key: str, names: list[str], where: str) -> dict[str, dict[int, float]]:
    """``{layer: {bits: indicator}}`` with finite float indicators."""
    out = {}
    for name, row in _per_layer(raw, key, names, where).items():
        if not isinstance(row, dict) or not row:
            raise _fail(where, f"{key}[{name!r}] must be a non-empty object {{bits: value}}, got {_show(row)}")
        out[name] = {}
        at = f"a bit-width key in {key}[{name!r}]"
        for b, v in row.items():
            bits = _bits(b, where, at)
            if bits in out[name]:
                raise _fail(where, f"{key}[{name!r}] gives bit-width {bits} twice")
            if not _finite(v):
                raise _fail(where, f"{key}[{name!r}][{b!r}] must be a finite number, got {_show(v)}")
            out[name][bits] = float(v)
    return out


def indicators_from_dict(raw: dict, where: str = "indicator data") -> Indicators:
    """Validate a parsed indicator file; raise DataFileError naming the first bad key or value."""
    if not isinstance(raw, dict):
        raise _fail(where, f"expected a JSON object with keys {list(REQUIRED_KEYS)}, got {type(raw).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise _fail(where, f"missing key(s) {missing}; an indicator file needs {list(REQUIRED_KEYS)}")
    names = raw["layer_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise _fail(where, f"'layer_names' must be a non-empty list of layer names, got {_show(names)}")
    if len(set(names)) != len(names):
        raise _fail(where, f"'layer_names' repeats {sorted({n for n in names if names.count(n) > 1})}")
    fixed_raw = raw.get("fixed_layers", {})
    if not isinstance(fixed_raw, dict):
        raise _fail(where, "'fixed_layers' must be an object {layer: {macs, params, w_bits, a_bits}}")
    fixed = {}
    for name, spec in fixed_raw.items():
        at = f"fixed_layers[{name!r}]"
        if name in names:
            raise _fail(where, f"{name!r} is both in layer_names and in fixed_layers")
        if not isinstance(spec, dict) or any(k not in spec for k in ("macs", "params", "w_bits", "a_bits")):
            raise _fail(where, f"{at} must have keys macs, params, w_bits, a_bits, got {_show(spec)}")
        fixed[name] = FixedLayer(_count(spec["macs"], where, f"{at}['macs']"),
                                 _count(spec["params"], where, f"{at}['params']"),
                                 _bits(spec["w_bits"], where, f"{at}['w_bits']"),
                                 _bits(spec["a_bits"], where, f"{at}['a_bits']"))
    return Indicators(
        layer_names=list(names),
        weight_indicators=_scores(raw, "weight_indicators", names, where),
        act_indicators=_scores(raw, "act_indicators", names, where),
        layer_macs={n: _count(v, where, f"layer_macs[{n!r}]")
                    for n, v in _per_layer(raw, "layer_macs", names, where).items()},
        layer_params={n: _count(v, where, f"layer_params[{n!r}]")
                      for n, v in _per_layer(raw, "layer_params", names, where).items()},
        fixed_layers=fixed,
    )


def check_indicators(ind: Indicators, where: str = "indicators") -> Indicators:
    """A validated copy of in-memory ``ind``: the checks an indicator file gets, on the same code path.

    Finite indicators, positive integer MACs and params (at most MAX_COUNT), bit-widths 1..32, every
    table over exactly ``layer_names``. ``solve_policy`` calls this first: a NaN indicator would
    otherwise give ``objective=nan`` or stall the solver. Raises DataFileError naming the bad value.
    """
    if not isinstance(ind, Indicators):
        raise _fail(where, f"expected an Indicators object, got {type(ind).__name__}")
    names = list(ind.layer_names) if isinstance(ind.layer_names, tuple) else ind.layer_names
    fixed = ind.fixed_layers
    if isinstance(fixed, dict):  # FixedLayer -> the file's {macs, params, w_bits, a_bits}
        fixed = {n: (asdict(f) if isinstance(f, FixedLayer) else f) for n, f in fixed.items()}
    return indicators_from_dict({"layer_names": names, "weight_indicators": ind.weight_indicators,
                                 "act_indicators": ind.act_indicators, "layer_macs": ind.layer_macs,
                                 "layer_params": ind.layer_params, "fixed_layers": fixed}, where)


def indicators_to_dict(ind: Indicators) -> dict:
    """The JSON-ready form of ``ind`` (bit-widths as string keys, layers in order)."""
    def scores(table):
        return {n: {str(b): table[n][b] for b in sorted(table[n], reverse=True)} for n in ind.layer_names}

    return {
        "layer_names": list(ind.layer_names),
        "weight_indicators": scores(ind.weight_indicators),
        "act_indicators": scores(ind.act_indicators),
        "layer_macs": {n: ind.layer_macs[n] for n in ind.layer_names},
        "layer_params": {n: ind.layer_params[n] for n in ind.layer_names},
        "fixed_layers": {n: {"macs": f.macs, "params": f.params, "w_bits": f.w_bits, "a_bits": f.a_bits}
                         for n, f in ind.fixed_layers.items()},
    }


def load_indicators(path) -> Indicators:
    """Read and validate an indicator JSON file (the LIMPQ fixture itself is a valid one)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataFileError(f"indicator file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataFileError(f"cannot read indicator file {path}: {err}") from None
    try:
        raw = json.loads(text)
    # ValueError covers JSONDecodeError and ints over Python's 4300-digit limit; RecursionError, nesting.
    except (ValueError, RecursionError) as err:
        raise DataFileError(f"{path} is not valid JSON: {err}") from None
    return indicators_from_dict(raw, where=str(path))


def save_indicators(path, indicators: Indicators, extra: dict | None = None) -> Path:
    """Validate, then write ``indicators`` (plus ``extra`` keys such as ``source``) atomically.

    Written to a temporary file in the same folder, then renamed over ``path``, so a crash never
    leaves half a file behind.
    """
    # Checked as a file is on load: never write a file we could not read back.
    data = indicators_to_dict(check_indicators(indicators, where="indicators to save"))
    clash = sorted(set(extra or {}) & set(data))
    if clash:
        raise DataFileError(f"extra keys {clash} would overwrite indicator keys")
    data.update(extra or {})
    path = Path(path)
    from mpqlab.checkpoint import atomic_write_bytes  # here: loading indicators must not import torch

    # one atomic writer for every result file (temporary file, fsync, rename; readable by all)
    atomic_write_bytes(path, lambda f: f.write(json.dumps(data, indent=1, allow_nan=False).encode()))
    return path


def synthetic_indicators(n_layers: int, bit_options=(6, 5, 4, 3, 2), seed: int = 0) -> Indicators:
    """Random but LIMPQ-shaped indicators for tests, benchmarks and exercises.

    s[l][b] = scale_l * 1.4^-b * noise, scale_l ~ U(0.5, 2), noise ~ U(0.8, 1.2): indicators fall
    with the bit-width, and the noise makes a few "wrong-way" values, as in LIMPQ's released file.
    """
    rng = random.Random(seed)
    names = [f"layer{i}" for i in range(n_layers)]

    def scores():
        out = {}
        for n in names:
            scale = rng.uniform(0.5, 2.0)
            out[n] = {b: scale * 1.4 ** -b * rng.uniform(0.8, 1.2) for b in bit_options}
        return out

    return Indicators(
        layer_names=names,
        weight_indicators=scores(),
        act_indicators=scores(),
        layer_macs={n: rng.randrange(1, 256) * 2 ** 16 for n in names},
        layer_params={n: rng.randrange(1, 256) * 2 ** 8 for n in names},
        fixed_layers={"first": FixedLayer(macs=2 ** 20, params=432), "last": FixedLayer(macs=5120, params=5120)},
    )
