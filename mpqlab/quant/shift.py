"""Multiplying by a power of two is a bit shift: an integer shift-and-accumulate dot product and conv.

With log-quantized activations a = +-2^k (Miyashita, Lee & Murmann 2016, arXiv:1603.01025, Sec. 3)
a product w * a needs no multiplier: if w is a fixed-point integer M with f fractional bits
(w = M / 2^f), then

    w * 2^k = Bitshift(M, k) / 2^f,   Bitshift(M, k) = M << k if k >= 0, M >> -k if k < 0.

A right shift drops bits, so we first give M g = max(0, -min k) extra fractional bits
(M' = M << g, f' = f + g); every shift is then exact and the accumulated sum

    y = sum_i Bitshift(M'_i, k_i) * sign(a_i) / 2^f'

equals the float dot product bit for bit (tested). Only base-2 levels are shifts: a base-sqrt(2)
level 2^(k/2) with odd k is not a power of two, so ``pow2_exponents`` refuses it.

The worked example of notebook 02, one function per step: w = 5.5 = b101.1 and a = 4.5 = b100.1;
truncating a to the power of two below (``floor_log2``) gives b100.0 = 2^2, and
Bitshift(b101.1, 2) = b10110 = 22 instead of 24.75; passed on as a power of two, 22 truncates
again to b10000 = 16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mpqlab.errors import QuantParamError, TensorValueError, check_tensor

_INT_BITS = 62  # int64 keeps 63 magnitude bits; one spare so a sum cannot wrap silently


def _check_frac_bits(frac_bits) -> int:
    if isinstance(frac_bits, bool) or not isinstance(frac_bits, int) or not 0 <= frac_bits <= 32:
        raise QuantParamError(f"frac_bits must be an integer from 0 to 32, got {frac_bits!r}")
    return frac_bits


def to_fixed(x, frac_bits: int) -> torch.Tensor:
    """The int64 M with x = M / 2^frac_bits; raises QuantParamError if x is not exactly representable.

    >>> to_fixed(5.5, 1)
    tensor(11)
    """
    frac_bits = _check_frac_bits(frac_bits)
    scaled = torch.as_tensor(x, dtype=torch.float64) * 2.0**frac_bits  # exact: a power-of-two scale
    check_tensor(scaled, name="x")
    bad = scaled != torch.round(scaled)
    if bool(bad.any()):
        value = float(scaled[bad].flatten()[0]) / 2.0**frac_bits
        raise QuantParamError(f"{value!r} is not a multiple of 2^-{frac_bits}; use more frac_bits or quantize it first")
    if bool((scaled.abs() >= 2.0**_INT_BITS).any()):
        raise QuantParamError(f"x * 2^{frac_bits} does not fit in {_INT_BITS} bits")
    return scaled.to(torch.int64)


def from_fixed(m: torch.Tensor, frac_bits: int) -> torch.Tensor:
    """M / 2^frac_bits as float64 (exact while |M| < 2^53)."""
    return torch.as_tensor(m).to(torch.float64) / 2.0 ** _check_frac_bits(frac_bits)


def to_binary_string(x, frac_bits: int) -> str:
    """Fixed-point binary of x with ``frac_bits`` digits after the point.

    >>> to_binary_string(5.5, 1), to_binary_string(22, 0), to_binary_string(-4, 1)
    ('b101.1', 'b10110', '-b100.0')
    """
    m = int(to_fixed(x, frac_bits))
    sign, m = ("-" if m < 0 else ""), abs(m)
    whole, frac = m >> frac_bits, m & ((1 << frac_bits) - 1)
    point = f".{frac:0{frac_bits}b}" if frac_bits else ""
    return f"{sign}b{whole:b}{point}"


def floor_log2(x) -> torch.Tensor:
    """floor(log2 x) for x > 0, exactly (read from the float's exponent field, no rounding of log2).

    >>> floor_log2(4.5), floor_log2(22.0), floor_log2(0.75)
    (tensor(2), tensor(4), tensor(-1))
    """
    x = check_tensor(torch.as_tensor(x, dtype=torch.float64))
    if bool((x <= 0).any()):
        raise TensorValueError(f"floor_log2 needs x > 0, got min {float(x.min())!r}")
    _, exponent = torch.frexp(x)  # x = mantissa * 2^exponent, mantissa in [0.5, 1)
    return exponent.to(torch.int64) - 1


def floor_pow2(x) -> torch.Tensor:
    """The power of two at or below x > 0: 2^floor(log2 x) (truncation in the log domain)."""
    k = floor_log2(x)
    return torch.ldexp(torch.ones_like(k, dtype=torch.float64), k)


def bitshift(m: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Bitshift(M, k) = M << k where k >= 0, M >> -k where k < 0 (arithmetic: rounds toward -inf)."""
    m, k = torch.as_tensor(m, dtype=torch.int64), torch.as_tensor(k, dtype=torch.int64)
    return torch.where(k >= 0, m << k.clamp(min=0), m >> (-k).clamp(min=0))


def pow2_exponents(a: torch.Tensor):
    """(sign, k) with a = sign * 2^k (sign in {-1, 0, 1}, k = 0 where a == 0).

    Raises TensorValueError if some a is not 0 or +-2^k.
    """
    a = check_tensor(torch.as_tensor(a), name="a").to(torch.float64)
    mantissa, exponent = torch.frexp(a)
    bad = (mantissa.abs() != 0.5) & (a != 0)
    if bool(bad.any()):
        raise TensorValueError(
            f"a holds {int(bad.sum())} values that are not 0 or +-2^k (e.g. {float(a[bad][0])!r}); "
            "shift arithmetic needs base-2 log-quantized activations"
        )
    sign = torch.sign(a).to(torch.int64)
    return sign, torch.where(a == 0, 0, exponent.to(torch.int64) - 1)


def shift_matmul(w_fixed: torch.Tensor, frac_bits: int, a_sign: torch.Tensor, a_exp: torch.Tensor):
    """Integer Y with y[n, o] = sum_i W[o, i] a[n, i] = Y[n, o] / 2^f', using only shifts and adds.

    W = w_fixed / 2^frac_bits (O, I); a = a_sign * 2^a_exp (N, I). Returns (Y, f') with
    f' = frac_bits + g, g = max(0, -min k) (see the module docstring).
    """
    frac_bits = _check_frac_bits(frac_bits)
    used = a_exp[a_sign != 0]
    g = max(0, -int(used.min())) if used.numel() else 0
    top = max(0, int(used.max())) if used.numel() else 0
    need = int(w_fixed.abs().max()).bit_length() + g + top + max(1, w_fixed.shape[-1]).bit_length()
    if need > _INT_BITS:
        raise QuantParamError(f"the sum needs {need} bits, more than the {_INT_BITS} an int64 holds; "
                              "use fewer frac_bits or a narrower exponent range")
    wide = w_fixed.to(torch.int64) << g  # (O, I): g more fractional bits, so the right shifts below are exact
    products = bitshift(wide[None, :, :], a_exp[:, None, :]) * a_sign[:, None, :]  # (N, O, I)
    return products.sum(-1), frac_bits + g  # (N, O)


def shift_linear(a_hat: torch.Tensor, w: torch.Tensor, frac_bits: int) -> torch.Tensor:
    """a_hat @ w.T by shift-and-accumulate, as float64. a_hat: (N, I) of 0 / +-2^k; w: (O, I) on a 2^-frac_bits grid."""
    a_sign, a_exp = pow2_exponents(a_hat)
    acc, out_frac = shift_matmul(to_fixed(w, frac_bits), frac_bits, a_sign, a_exp)
    return from_fixed(acc, out_frac)


def shift_conv2d(a_hat: torch.Tensor, w: torch.Tensor, frac_bits: int,
                 stride: int = 1, padding: int = 0) -> torch.Tensor:
    """conv2d(a_hat, w) by shift-and-accumulate (float64, no bias, groups=1).

    Via unfold: each output pixel is one dot product of a kernel-sized patch with each filter.
    """
    n, _, h, wd = a_hat.shape  # (N, C, H, W)
    o, _, kh, kw = w.shape  # (O, C, kh, kw)
    cols = F.unfold(a_hat.to(torch.float64), (kh, kw), padding=padding, stride=stride)  # (N, C*kh*kw, L)
    rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])  # (N*L, C*kh*kw)
    y = shift_linear(rows, w.reshape(o, -1), frac_bits)  # (N*L, O)
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (wd + 2 * padding - kw) // stride + 1
    return y.reshape(n, ho, wo, o).permute(0, 3, 1, 2)  # (N, O, Ho, Wo)
