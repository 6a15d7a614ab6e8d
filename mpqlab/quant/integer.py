"""Integer-only inference (Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", Sec. 2): a quantized layer computed with integers alone.

With ``x = s_x (q_x - z_x)``, ``w = s_w (q_w - z_w)`` and ``y = s_y (q_y - z_y)``, a linear layer
``y = W x + b`` becomes (their Sec. 2.2, with the int32 bias of Sec. 2.4)

    acc = sum_k (q_w - z_w)(q_x - z_x) + q_b               8-bit x 8-bit products, int32 sums
    q_y = clamp(z_y + M * acc, q_min, q_max),   M = s_x s_w / s_y

where the bias is stored as int32 with scale ``s_x s_w`` and zero point 0: ``q_b = round(b / (s_x s_w))``.
The one real number left, ``M``, is written as ``M = M0 * 2^(-shift)`` with ``M0`` in [0.5, 1) held as
the int32 ``m0 = round(M0 * 2^31)``, so ``M * acc`` is an integer multiply and a shift.
Rounding follows gemmlowp: the multiply keeps the high 32 bits of the doubled 64-bit product rounded to
nearest (ties away from zero), and the shift rounds to nearest, ties away from zero.

Jacob et al. expand the zero points (Sec. 2.3) so the inner loop multiplies raw uint8 values; here we
subtract them first, which gives the same integers and reads like the formula. We hold the integers in
int64 tensors: an int32 overflow would then show up as a value outside the int32 range (the tests check
none does) instead of silently wrapping around, and the requantizing product needs 64 bits anyway.
Introduced in notebook 01.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from mpqlab.errors import QuantParamError, check_positive
from mpqlab.quant.uniform import dequantize, qparams_from_range, quant_range, quantize

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


@dataclass(frozen=True)
class QParams:
    """Per-tensor quantization of an activation: ``x = scale * (q - zero_point)``, q in [q_min, q_max]."""

    scale: float
    zero_point: int
    q_min: int
    q_max: int


def quantize_multiplier(multiplier: float) -> tuple[int, int]:
    """``M = m0 * 2^(-31) * 2^(-shift)`` with ``m0`` an int32 in [2^30, 2^31): returns ``(m0, shift)``.

    ``shift`` is a right shift; it is negative (a left shift) only when M >= 1.

    >>> quantize_multiplier(0.3)   # 0.3 = 0.6 * 2^-1, 0.6 * 2^31 = 1288490189
    (1288490189, 1)
    """
    multiplier = check_positive(multiplier, name="multiplier M")
    mantissa, exponent = math.frexp(multiplier)  # M = mantissa * 2^exponent, mantissa in [0.5, 1)
    m0 = round(mantissa * 2**31)
    if m0 == 2**31:  # the mantissa rounded up to 1.0
        m0, exponent = 2**30, exponent + 1
    return m0, -exponent


def rounding_doubling_high_mul(a: torch.Tensor, m0: torch.Tensor) -> torch.Tensor:
    """``round(a * m0 / 2^31)``, ties away from zero (gemmlowp's SaturatingRoundingDoublingHighMul).

    ``a`` and ``m0`` hold int32 values in int64 tensors, so the product is exact. (gemmlowp saturates the
    single overflowing case a = m0 = -2^31; here m0 >= 2^30 > 0, so it cannot occur.)
    """
    product = a * m0
    nudge = torch.where(product >= 0, 2**30, 1 - 2**30)
    return torch.div(product + nudge, 2**31, rounding_mode="trunc")


def rounding_right_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``round(x / 2^shift)``, ties away from zero (gemmlowp's RoundingDivideByPOT), for ``shift >= 0``."""
    mask = (1 << shift) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0).long()
    return (x >> shift) + (remainder > threshold).long()


def requantize(acc: torch.Tensor, multiplier: torch.Tensor, out: QParams, ch_axis: int = 1) -> torch.Tensor:
    """``q_y = clamp(z_y + M * acc, q_min, q_max)`` in integers; ``multiplier`` holds M per output channel (C,)."""
    pairs = [quantize_multiplier(m) for m in multiplier.tolist()]
    shape = [1] * acc.dim()
    shape[ch_axis] = -1
    m0 = torch.tensor([p[0] for p in pairs], dtype=torch.int64).reshape(shape)
    shift = torch.tensor([p[1] for p in pairs], dtype=torch.int64).reshape(shape)
    scaled = rounding_doubling_high_mul(acc << (-shift).clamp(min=0), m0)
    scaled = rounding_right_shift(scaled, shift.clamp(min=0))
    return (scaled + out.zero_point).clamp(out.q_min, out.q_max)


def quantize_weight(layer: nn.Module, bits: int = 8, symmetric: bool = True):
    """Per-output-channel signed weights: ``(q_w, w_scale, w_zero_point)`` with int64 ``q_w``, (C,) qparams.

    Symmetric uses the narrow range [-127, 127] at 8 bits, so ``|q_w - z_w| <= 127`` (as TFLite does).
    """
    w = layer.weight.detach().float()
    rows = w.reshape(w.shape[0], -1)  # (C_out, K)
    q_min, q_max = quant_range(bits, signed=True, narrow=symmetric)
    w_scale, w_zp = qparams_from_range(rows.min(dim=1).values, rows.max(dim=1).values, bits,
                                       symmetric=symmetric, signed=True, narrow=symmetric)
    return quantize(w, w_scale, w_zp, q_min, q_max, ch_axis=0).long(), w_scale, w_zp.long()


def quantize_bias(layer: nn.Module, x_scale: float, w_scale: torch.Tensor) -> torch.Tensor:
    """``q_b = round(b / (s_x s_w))`` as int64 values that must fit in int32 (zeros if the layer has no bias)."""
    if layer.bias is None:
        return torch.zeros(w_scale.shape[0], dtype=torch.int64)
    q_b = torch.round(layer.bias.detach().double() / (x_scale * w_scale.double()))
    if bool((q_b.abs() > INT32_MAX).any()):
        raise QuantParamError(f"the int32 bias overflows: largest |q_b| = {q_b.abs().max().item():.3g} > 2^31 - 1; "
                              "the input or weight scale is too small for this bias")
    return q_b.long()


def linear_accumulate(q_x: torch.Tensor, x_zero_point: int, q_w: torch.Tensor, w_zero_point: torch.Tensor,
                      q_b: torch.Tensor) -> torch.Tensor:
    """``acc[n, o] = sum_k (q_w[o, k] - z_w[o]) (q_x[n, k] - z_x) + q_b[o]``, int64 tensor of shape (N, O)."""
    x = q_x.long() - x_zero_point            # (N, K)
    w = q_w - w_zero_point[:, None]          # (O, K)
    return x @ w.T + q_b


def conv2d_accumulate(q_x: torch.Tensor, x_zero_point: int, q_w: torch.Tensor, w_zero_point: torch.Tensor,
                      q_b: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """The conv version of ``linear_accumulate``: im2col, then a (grouped) integer matmul. Shape (N, O, H', W').

    Padding adds ``q_x = z_x`` (real 0). ``F.unfold`` has no integer kernel, so the centred values pass
    through float64, which holds every integer below 2^53 exactly: the copy changes no value.
    """
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise QuantParamError(f"integer conv supports numeric zero padding only, got padding={conv.padding!r}, "
                              f"padding_mode={conv.padding_mode!r}")
    n, _, h, w_in = q_x.shape
    x = (q_x.long() - x_zero_point).double()                                     # (N, C, H, W)
    cols = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride).long()  # (N, C*kh*kw, L)
    g = conv.groups
    cols = cols.reshape(n, g, -1, cols.shape[-1])                                # (N, G, K, L)
    w = (q_w - w_zero_point[:, None, None, None]).reshape(g, q_w.shape[0] // g, -1)  # (G, O/G, K)
    acc = torch.einsum("gok,ngkl->ngol", w, cols).reshape(n, q_w.shape[0], -1)   # (N, O, L)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    h_out = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w_out = (w_in + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return (acc + q_b[:, None]).reshape(n, -1, h_out, w_out)


def integer_forward(layer: nn.Module, q_x: torch.Tensor, x_qparams: QParams, y_qparams: QParams,
                    w_bits: int = 8) -> torch.Tensor:
    """Run a float ``nn.Linear``/``nn.Conv2d`` on quantized input ``q_x`` with integer arithmetic only.

    Weights are quantized per output channel (symmetric, narrow, ``w_bits``); returns ``q_y`` (int64 values).
    """
    q_w, w_scale, w_zp = quantize_weight(layer, w_bits)
    q_b = quantize_bias(layer, x_qparams.scale, w_scale)
    if isinstance(layer, nn.Conv2d):
        acc = conv2d_accumulate(q_x, x_qparams.zero_point, q_w, w_zp, q_b, layer)
    elif isinstance(layer, nn.Linear):
        acc = linear_accumulate(q_x, x_qparams.zero_point, q_w, w_zp, q_b)
    else:
        raise TypeError(f"integer_forward supports nn.Linear and nn.Conv2d, got {type(layer).__name__}")
    multiplier = x_qparams.scale * w_scale.double() / y_qparams.scale  # (C_out,) real multipliers M
    return requantize(acc, multiplier, y_qparams, ch_axis=1)


def float_reference(layer: nn.Module, q_x: torch.Tensor, x_qparams: QParams, y_qparams: QParams,
                    w_bits: int = 8) -> torch.Tensor:
    """What ``integer_forward`` emulates, computed in float: dequantized input and weights through the float
    layer, output quantized with ``y_qparams``. The two agree to within one output step."""
    q_w, w_scale, w_zp = quantize_weight(layer, w_bits)
    w_hat = dequantize(q_w, w_scale, w_zp, ch_axis=0)
    x_hat = dequantize(q_x, x_qparams.scale, x_qparams.zero_point)
    if isinstance(layer, nn.Conv2d):
        y = layer._conv_forward(x_hat, w_hat, layer.bias)
    else:
        y = F.linear(x_hat, w_hat, layer.bias)
    return quantize(y, y_qparams.scale, y_qparams.zero_point, y_qparams.q_min, y_qparams.q_max).long()
