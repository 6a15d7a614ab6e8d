"""Uniform affine quantization: the integer grid every other method in the workbook is compared with.

    q     = clamp(round(x / scale) + zero_point, q_min, q_max)      (quantize)
    x_hat = scale * (q - zero_point)                                 (dequantize)

``fake_quantize`` does both at once and keeps the result in float, with the straight-through
estimator (STE) backward: gradient 1 where x fell inside the clipping range, 0 where it was
clipped. Per-channel quantization gives every slice along ``ch_axis`` its own scale and zero point.
Weights default to the restricted signed range [-(2^(b-1) - 1), 2^(b-1) - 1] (``default_weight_quantizer``).

References: Gholami et al. 2021, "A Survey of Quantization Methods for Efficient Neural Network
Inference", Sec. III-A/B; Jacob et al. 2018, "Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference", Sec. 2.1. Introduced in notebook 01.
"""

from __future__ import annotations

import torch

from mpqlab.errors import BitWidthError, QuantParamError, check_bits, check_tensor
from mpqlab.quant.quantizer import Quantizer


def checks_enabled() -> bool:
    """False while ``torch.compile`` traces: value checks read tensors back (``bool(t)``), which breaks the graph.

    The checks still run in eager mode, where learners meet the errors; a compiled model is one that
    has already run eagerly.
    """
    return not torch.compiler.is_compiling()


def quant_range(bits: int, signed: bool = False, narrow: bool = False) -> tuple[int, int]:
    """The integer grid ``(q_min, q_max)`` of a ``bits``-bit format.

    signed: [-2^(b-1), 2^(b-1) - 1] (int8: [-128, 127]); unsigned: [0, 2^b - 1] (uint8: [0, 255]).
    ``narrow`` drops the lowest code, e.g. int8 -> [-127, 127], which is symmetric around 0.

    >>> quant_range(8, signed=True, narrow=True)
    (-127, 127)
    """
    bits = check_bits(bits)
    if narrow and bits == 1:
        raise BitWidthError("a narrow range needs bits >= 2: 1-bit narrow leaves a single code")
    q_min, q_max = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    return q_min + int(narrow), q_max


def qparams_from_range(x_min, x_max, bits: int, symmetric: bool = False, signed: bool = False,
                       narrow: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero_point)`` mapping the float range ``[x_min, x_max]`` onto ``[q_min, q_max]``.

    The range is first widened to contain 0, so that 0 is exactly representable (q = zero_point):

        asymmetric:           scale = (x_max - x_min) / (q_max - q_min),  zero_point = q_min - round(x_min / scale)
        symmetric, signed:    scale = max(|x_min|, |x_max|) / ((q_max - q_min) / 2),  zero_point = 0
        symmetric, unsigned:  scale = x_max / (q_max - q_min),  zero_point = q_min  (for x >= 0, e.g. after ReLU)

    An all-zero range gets ``scale = 1`` (any positive scale maps 0 to 0), so constant tensors still
    give a valid quantizer. ``x_min``/``x_max`` are numbers or tensors of shape (C,) for per-channel.
    Returns float32 ``scale`` and int32 ``zero_point`` of the same shape.
    """
    q_min, q_max = quant_range(bits, signed, narrow)
    x_min = torch.as_tensor(x_min, dtype=torch.float32)
    x_max = torch.as_tensor(x_max, dtype=torch.float32)
    if checks_enabled():
        if not (bool(torch.isfinite(x_min).all()) and bool(torch.isfinite(x_max).all())):
            raise QuantParamError(f"x_min and x_max must be finite, got {x_min.tolist()} and {x_max.tolist()}")
        if bool((x_min > x_max).any()):
            raise QuantParamError(f"x_min must be <= x_max, got {x_min.tolist()} > {x_max.tolist()}")
    x_min, x_max = x_min.clamp(max=0.0), x_max.clamp(min=0.0)  # widen to contain 0
    if symmetric and signed:
        span, levels = torch.maximum(-x_min, x_max), (q_max - q_min) / 2
    elif symmetric:
        span, levels = x_max, q_max - q_min
    else:
        span, levels = x_max - x_min, q_max - q_min
    scale = torch.where(span > 0, span / levels, torch.ones_like(span))
    scale = scale.clamp(min=torch.finfo(torch.float32).tiny)  # a subnormal span must not underflow to 0
    if symmetric:
        zero_point = torch.full_like(scale, 0 if signed else q_min)
    else:
        zero_point = (q_min - torch.round(x_min / scale)).clamp(q_min, q_max)
    return scale, zero_point.to(torch.int32)


def _broadcast_qparams(x: torch.Tensor, scale, zero_point, q_min: int, q_max: int, ch_axis: int | None):
    """Validate the qparams and shape them to broadcast against ``x``: () per-tensor, (1, C, 1, 1) per-channel."""
    if checks_enabled():
        check_tensor(x)
    if not (isinstance(q_min, int) and isinstance(q_max, int) and q_min < q_max):
        raise QuantParamError(f"need integers q_min < q_max, got q_min={q_min!r}, q_max={q_max!r}")
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    zero_point = torch.as_tensor(zero_point, device=x.device)
    if checks_enabled():
        if not bool((torch.isfinite(scale) & (scale > 0)).all()):
            raise QuantParamError(f"scale must be positive and finite, got {scale.tolist()}")
        if zero_point.is_floating_point() and not bool((zero_point == zero_point.round()).all()):
            raise QuantParamError(f"zero_point must hold integers, got {zero_point.tolist()}")
        if bool(((zero_point < q_min) | (zero_point > q_max)).any()):
            raise QuantParamError(f"zero_point must lie in [q_min, q_max] = [{q_min}, {q_max}], "
                                  f"got {zero_point.tolist()}")
    if ch_axis is None:
        if scale.numel() != 1 or zero_point.numel() != 1:
            raise QuantParamError(f"per-tensor quantization needs one scale and zero_point, got {scale.numel()} "
                                  f"and {zero_point.numel()} (pass ch_axis for per-channel)")
        return scale.reshape(()), zero_point.reshape(()).to(x.dtype)
    if not (isinstance(ch_axis, int) and -x.dim() <= ch_axis < x.dim()):
        raise QuantParamError(f"ch_axis must be an int in [{-x.dim()}, {x.dim() - 1}] for a {x.dim()}-d tensor, "
                              f"got {ch_axis!r}")
    channels = x.shape[ch_axis]
    if scale.numel() != channels or zero_point.numel() != channels:
        raise QuantParamError(f"per-channel along ch_axis={ch_axis} needs {channels} scales and zero points, "
                              f"got {scale.numel()} and {zero_point.numel()}")
    shape = [1] * x.dim()
    shape[ch_axis] = channels
    return scale.reshape(shape), zero_point.reshape(shape).to(x.dtype)


def quantize(x: torch.Tensor, scale, zero_point, q_min: int, q_max: int, ch_axis: int | None = None) -> torch.Tensor:
    """``q = clamp(round(x / scale) + zero_point, q_min, q_max)`` as an int32 tensor (round half to even)."""
    scale, zero_point = _broadcast_qparams(x, scale, zero_point, q_min, q_max, ch_axis)
    return (torch.round(x * (1.0 / scale)) + zero_point).clamp(q_min, q_max).to(torch.int32)


def dequantize(q: torch.Tensor, scale, zero_point, ch_axis: int | None = None) -> torch.Tensor:
    """``x_hat = scale * (q - zero_point)`` as a float32 tensor."""
    scale = torch.as_tensor(scale, dtype=torch.float32, device=q.device)
    zero_point = torch.as_tensor(zero_point, device=q.device)
    if ch_axis is not None:
        shape = [1] * q.dim()
        shape[ch_axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    return (q.to(torch.float32) - zero_point) * scale


class _FakeQuantizeSTE(torch.autograd.Function):
    """Forward: ``x_hat``. Backward: the STE, gradient 1 inside the clipping range and 0 outside.

    The mask is computed once in forward (as ``clamp(q) == q``) and saved, so backward is one multiply.
    """

    @staticmethod
    def forward(ctx, x, scale, zero_point, q_min, q_max):
        # x * (1/scale) rather than x / scale: a multiply is cheaper, and PyTorch's own kernels do the same.
        q = x.mul(1.0 / scale).round_().add_(zero_point)
        q_clamped = q.clamp(q_min, q_max)
        ctx.save_for_backward(q_clamped == q)  # True where x was not clipped
        return q_clamped.sub_(zero_point).mul_(scale)

    @staticmethod
    def backward(ctx, grad_out):
        (inside,) = ctx.saved_tensors
        # where(), not grad_out * inside: multiplying by a bool tensor converts it to float first (measured 3x slower)
        return torch.where(inside, grad_out, 0.0), None, None, None, None


def fake_quantize(x: torch.Tensor, scale, zero_point, q_min: int, q_max: int,
                  ch_axis: int | None = None) -> torch.Tensor:
    """``x_hat = scale * (clamp(round(x / scale) + zero_point, q_min, q_max) - zero_point)``, STE backward.

    Gradients flow to ``x`` only; methods that learn the scale (LSQ, PACT) have their own modules.

    >>> fake_quantize(torch.tensor([0.26, -1.0, 9.0]), scale=0.5, zero_point=0, q_min=-4, q_max=3)
    tensor([ 0.5000, -1.0000,  1.5000])
    """
    scale, zero_point = _broadcast_qparams(x, scale, zero_point, q_min, q_max, ch_axis)
    return _FakeQuantizeSTE.apply(x, scale, zero_point, q_min, q_max)


class UniformQuantizer(Quantizer):
    """Fake-quantizes with the ``(scale, zero_point)`` its observer measures.

    ``mode="dynamic"``: the observer is reset and the qparams recomputed from every tensor (weights,
    which change at every training step). ``mode="static"``: while ``calibrating`` the observer
    accumulates statistics over all batches and the current qparams are used; ``freeze()`` fixes
    them in the ``scale``/``zero_point`` buffers (saved in the state dict); ``unfreeze()`` restarts.
    """

    def __init__(self, observer, mode: str = "dynamic"):
        # a narrow 1-bit grid would hold the single code 0: refuse bits=1 at once, also on later assignment
        self.min_bits = 2 if getattr(observer, "narrow", False) else 1
        super().__init__(observer.bits)
        if mode not in ("dynamic", "static"):
            raise QuantParamError(f"mode must be 'dynamic' or 'static', got {mode!r}")
        self.observer = observer
        self.mode = mode
        self.calibrating = mode == "static"
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.int32))

    def bits_changed(self) -> None:
        self.observer.bits = self.bits
        if self.mode == "static" and not self.calibrating:
            self.scale, self.zero_point = self.observer.compute_qparams()  # same statistics, new grid

    def quantize_float(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "dynamic":
            self.observer.reset()
        if self.mode == "dynamic" or self.calibrating:
            self.observer(x)
            scale, zero_point = self.observer.compute_qparams()
        else:
            scale, zero_point = self.scale, self.zero_point
        return fake_quantize(x, scale, zero_point, self.observer.q_min, self.observer.q_max, self.observer.ch_axis)

    def freeze(self) -> None:
        """Fix the qparams from the statistics seen so far (static mode)."""
        if self.mode != "static":
            raise QuantParamError("freeze() needs a quantizer built with mode='static'; this one is dynamic")
        self.scale, self.zero_point = self.observer.compute_qparams()
        self.calibrating = False

    def unfreeze(self) -> None:
        """Forget the statistics and calibrate again."""
        self.observer.reset()
        self.calibrating = self.mode == "static"

    def get_extra_state(self):
        return {"calibrating": self.calibrating}

    def set_extra_state(self, state) -> None:
        self.calibrating = bool(state["calibrating"])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Per-channel qparams have shape (C,), unknown until data is seen: take the saved shape.
        for name in ("scale", "zero_point"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        state = "calibrating" if self.calibrating else "frozen"
        return f"bits={self.bits}, mode={self.mode}" + (f" ({state})" if self.mode == "static" else "")


def default_weight_quantizer(bits: int, name: str = "", layer=None, *, narrow: bool = True) -> UniformQuantizer:
    """Weights: symmetric, signed, per output channel (``ch_axis=0``), min-max, recomputed every step.

    The grid is the *restricted* ("narrow") signed range by default, symmetric around 0 (int8: [-127, 127],
    4 bits: [-7, 7]); for output channel c

        q_max = 2^(b-1) - 1,   scale_c = max|w_c| / q_max,   zero_point = 0,
        w_hat = scale_c * clamp(round(w / scale_c), -q_max, q_max),

    so each channel's largest |w| lands exactly on the top or bottom code, and every code can be negated.
    That is the weight range of Jacob et al. 2018 and of its gemmlowp / TensorFlow Lite implementation,
    [-127, 127] at 8 bits; ``mpqlab.quant.integer.quantize_weight`` uses the same grid.

    ``narrow=False`` gives the *full* range [-2^(b-1), 2^(b-1) - 1] (int8: [-128, 127]) with
    scale_c = max|w_c| / (2^(b-1) - 1/2) (4 bits: max|w_c| / 7.5): the channel's largest |w| falls halfway
    between two codes and moves by half a step. ``full_range_weight_quantizer`` is the same as a factory.
    The restricted range needs ``bits >= 2`` (BitWidthError otherwise: 1 bit would leave the single code 0).
    """
    from mpqlab.quant.observers import MinMaxObserver  # here, not at the top: observers.py imports this module

    observer = MinMaxObserver(bits, symmetric=True, signed=True, narrow=narrow, ch_axis=0)
    return UniformQuantizer(observer, mode="dynamic")


def full_range_weight_quantizer(bits: int, name: str = "", layer=None) -> UniformQuantizer:
    """``default_weight_quantizer`` on the full signed range [-2^(b-1), 2^(b-1) - 1]: the comparison grid.

    scale_c = max|w_c| / (2^(b-1) - 1/2), zero_point = 0; at 4 bits the grid is {-8, ..., 7} * max|w_c| / 7.5.
    """
    return default_weight_quantizer(bits, name, layer, narrow=False)


def default_act_quantizer(bits: int, name: str, layer) -> UniformQuantizer:
    """Input activations: asymmetric, unsigned, per-tensor, running (EMA) min-max; static once frozen."""
    from mpqlab.quant.observers import EMAMinMaxObserver

    return UniformQuantizer(EMAMinMaxObserver(bits, symmetric=False, signed=False), mode="static")
