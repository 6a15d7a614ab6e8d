"""Exceptions raised by mpqlab, and the small checks that raise them.

Every check names the bad value and what is allowed, so a learner never has to
read a traceback from deep inside torch to find out what went wrong.
"""

from __future__ import annotations

import math
import numbers


class MpqlabError(Exception):
    """Base class of every error mpqlab raises on purpose."""


class BitWidthError(MpqlabError, ValueError):
    """A bit-width that is not an integer in the allowed range."""


class TensorValueError(MpqlabError, ValueError):
    """A tensor that cannot be quantized as given: empty, NaN or Inf."""


class QuantParamError(MpqlabError, ValueError):
    """A quantization parameter (scale, zero point, axis, ratio, ...) out of range."""


class PolicyError(MpqlabError, ValueError):
    """A bit-width policy that names unknown layers or misses known ones."""


class InfeasibleBudgetError(MpqlabError, ValueError):
    """A BitOps or model-size budget that no policy can meet."""


class DataFileError(MpqlabError, OSError):
    """A data file that is missing, truncated or not in the expected format."""


class CheckpointError(MpqlabError, RuntimeError):
    """A checkpoint that is missing, corrupt or does not fit the model."""


class ModelSpecError(MpqlabError, ValueError):
    """A model name, ``--model`` spec or architecture setting that names no model mpqlab can build."""


class GraphError(MpqlabError, ValueError):
    """A model whose forward cannot be traced, or that has no conv/linear layer to quantize or count."""


class DeviceError(MpqlabError, ValueError):
    """A device that is not there."""


class UsageError(MpqlabError, ValueError):
    """A command-line option or function argument out of its allowed range."""


MIN_BITS = 1
MAX_BITS = 16


def check_bits(bits, *, name: str = "bits", low: int = MIN_BITS, high: int = MAX_BITS) -> int:
    """Return ``bits`` as an int, or raise BitWidthError naming it and the range ``low..high``."""
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        if isinstance(bits, numbers.Real) and not isinstance(bits, bool) and float(bits).is_integer():
            bits = int(bits)
        else:
            raise BitWidthError(f"{name} must be an integer from {low} to {high}, got {bits!r}")
    bits = int(bits)
    if not low <= bits <= high:
        raise BitWidthError(f"{name} must be an integer from {low} to {high}, got {bits}")
    return bits


def check_tensor(x, *, name: str = "x"):
    """Raise TensorValueError if tensor ``x`` is empty or holds NaN/Inf; return it unchanged."""
    import torch

    if not isinstance(x, torch.Tensor):
        raise TensorValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.numel() == 0:
        raise TensorValueError(f"{name} is empty (shape {tuple(x.shape)}): there is nothing to quantize")
    # A finite sum proves every element finite and costs one reduction; count only when it is not.
    if x.is_floating_point() and not math.isfinite(float(x.detach().sum())) and not bool(torch.isfinite(x).all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise TensorValueError(
            f"{name} holds {n_nan} NaN and {n_inf} Inf values out of {x.numel()}; "
            "only finite values can be quantized"
        )
    return x


def check_floating(x, *, name: str = "x"):
    """Raise TensorValueError unless ``x`` is a floating-point tensor; return it unchanged.

    Quantizers and observers map real numbers onto a grid: an integer or bool tensor has no meaningful
    scale (and torch truncates one computed from it), so it is refused with the conversion to use.
    """
    import torch

    if not isinstance(x, torch.Tensor):
        raise TensorValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        dtype = str(x.dtype).removeprefix("torch.")
        raise TensorValueError(f"quantizers take floating-point tensors; {name} is {dtype}, "
                               "convert it with x.float()")
    return x


def check_int(value, *, name: str, low: int, high: int | None = None) -> int:
    """Return ``value`` as an int in ``[low, high]`` (``high=None``: no upper bound), else raise QuantParamError."""
    allowed = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise QuantParamError(f"{name} must be {allowed}, got {value!r}")
    if value < low or (high is not None and value > high):
        raise QuantParamError(f"{name} must be {allowed}, got {value}")
    return int(value)


def check_positive(value, *, name: str) -> float:
    """Return ``value`` as a float if it is finite and > 0, else raise QuantParamError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise QuantParamError(f"{name} must be a positive number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise QuantParamError(f"{name} must be a positive finite number, got {value!r}")
    return v


def check_fraction(value, *, name: str, low: float = 0.0, high: float = 1.0, high_inclusive: bool = False) -> float:
    """Return ``value`` as a float in ``[low, high)`` (or ``[low, high]``), else raise QuantParamError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise QuantParamError(f"{name} must be a number in [{low}, {high}), got {value!r}") from None
    ok = low <= v <= high if high_inclusive else low <= v < high
    if not ok or math.isnan(v):
        bracket = "]" if high_inclusive else ")"
        raise QuantParamError(f"{name} must be in [{low}, {high}{bracket}, got {value!r}")
    return v
