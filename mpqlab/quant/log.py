"""Logarithmic quantization: every value becomes 0 or +-2^k (Miyashita, Lee & Murmann 2016).

D. Miyashita, E. H. Lee, B. Murmann, "Convolutional Neural Networks using Logarithmic Data
Representation", arXiv:1603.01025. Trained weights and activations spread over several octaves
with most values near zero; a log grid spends its codes evenly per octave, and multiplying by
2^k is a bit shift (``mpqlab/quant/shift.py`` shows the integer arithmetic).

The paper's rule, for a b-bit code and a full-scale-range exponent ``fsr``:

    LogQuant(x) = 0 if x == 0, else sign(x) * 2^x~
    x~ = Clip(Round(log2 |x|), fsr - 2^b, fsr)
    Clip(k, lo, hi) = 0 if k <= lo;  hi - 1 if k >= hi;  k otherwise

How we read it (one reading, used everywhere in the workbook):

- "k <= lo gives 0" means the *value* becomes 0. The exponent ``fsr - 2^b`` itself is never
  produced, so one code is spent on zero: the b-bit codes are {0} and the 2^b - 1 powers
  2^(fsr - 2^b + 1), ..., 2^(fsr - 1). That is exactly 2^b codes.
- Unsigned tensors (post-ReLU activations) use all b bits for the magnitude; negatives become 0.
- Signed tensors (weights): one bit is the sign, the magnitude follows the rule with m = b - 1
  bits: {0, +-2^(fsr - 2^m + 1), ..., +-2^(fsr - 1)}. +0 and -0 share a value, so one of the 2^b
  codes is wasted. Signed needs b >= 2.
- Round is taken in the log domain: |x| goes up to 2^(k+1) from the geometric midpoint
  2^(k + 1/2) on, not from the arithmetic one 1.5 * 2^k.
- Base sqrt(2): x~ = Round(2 log2 |x|) and the value is 2^(x~ / 2). ``fsr`` then counts
  half-octaves, so the top level is 2^((fsr - 1) / 2). In general, with s steps per octave
  (s = 1 for base "2", s = 2 for "sqrt2"): value = 2^(x~ / s), x~ = Round(s log2 |x|).

Introduced in notebook 02 (log quantization).
"""

from __future__ import annotations

import math
import numbers

import torch

from mpqlab.errors import BitWidthError, QuantParamError, check_bits, check_fraction, check_tensor
from mpqlab.quant.quantizer import Quantizer

BASES = {"2": 1, "sqrt2": 2}  # base name -> steps per octave s


def steps_per_octave(base: str) -> int:
    """s in value = 2^(k / s): 1 for base "2", 2 for base "sqrt2"."""
    if base not in BASES:
        raise QuantParamError(f"base must be one of {sorted(BASES)}, got {base!r}")
    return BASES[base]


def magnitude_bits(bits: int, signed: bool) -> int:
    """Bits left for the exponent code: b for unsigned tensors, b - 1 when one bit is the sign."""
    bits = check_bits(bits, low=2 if signed else 1)
    return bits - 1 if signed else bits


def exp2_steps(k: torch.Tensor, s: int, dtype=torch.float64) -> torch.Tensor:
    """2^(k / s) for integer k (an integer tensor, or floats holding integers), exact whatever the shape.

    ``torch.exp2`` of a fractional exponent may differ in the last bit between its vectorised and
    scalar paths, which would put values a hair off the level grid. So exp2 only makes whole powers
    (exact: powers of two), times a table of 2^(r/s):  2^(k/s) = 2^floor(k/s) * 2^(r/s),  r = k mod s.
    Kept in floating point (no int64 round trip): this runs on every activation of a log-quantized net.
    (Below the smallest normal float, 2^-126 in float32, a result may round to 0 instead of a subnormal.)
    """
    k = k.to(dtype)
    if s == 1:
        return torch.exp2(k)
    whole = torch.floor(k / s)
    table = torch.tensor([2.0 ** (r / s) for r in range(s)], dtype=dtype, device=k.device)
    return torch.exp2(whole) * table[(k - whole * s).long()]  # exact: scaling by a power of two


def _check_fsr(fsr) -> int:
    ok = isinstance(fsr, numbers.Integral) or (isinstance(fsr, float) and fsr.is_integer())
    if isinstance(fsr, bool) or not ok or abs(fsr) > 1000:
        raise QuantParamError(f"fsr must be an integer exponent in [-1000, 1000], got {fsr!r}")
    return int(fsr)


def _exponents(x: torch.Tensor, bits: int, fsr: int, signed: bool, base: str):
    """k = min(Round(s log2 |x|), fsr - 1) as floats holding integers, and the zero mask."""
    check_tensor(x)
    s, m, fsr = steps_per_octave(base), magnitude_bits(bits, signed), _check_fsr(fsr)
    mag = x.detach().abs() if signed else x.detach().clamp(min=0)
    zero = mag == 0
    k = torch.log2(mag.masked_fill_(zero, 1.0))  # log2(0) = -inf takes a slow path; those are masked anyway
    k = torch.round(k if s == 1 else s * k)
    zero |= k <= fsr - 2**m  # exponents at or below fsr - 2^m are read as the value 0
    return k.clamp_(max=fsr - 1), zero


def log_exponents(x: torch.Tensor, bits: int, fsr: int, signed: bool = True, base: str = "2"):
    """Integer exponents k and a zero mask such that LogQuant(x) = sign(x) * 2^(k / s), or 0 where masked.

    k = min(Round(s log2 |x|), fsr - 1); masked (value 0) where that rounding gives k <= fsr - 2^m
    (m magnitude bits), where x == 0, and where x < 0 for unsigned tensors.

    >>> log_exponents(torch.tensor([0.3, 0.0, 5.0]), bits=3, fsr=2, signed=False)
    (tensor([-2,  1,  1]), tensor([False,  True, False]))
    """
    k, zero = _exponents(x, bits, fsr, signed, base)
    return k.masked_fill_(zero, _check_fsr(fsr) - 1).to(torch.int64), zero


def log_quantize(x: torch.Tensor, bits: int, fsr: int, signed: bool = True, base: str = "2") -> torch.Tensor:
    """LogQuant(x) (see the module docstring), with a straight-through gradient.

    >>> log_quantize(torch.tensor([0.3, -3.0, 5.0, 0.8]), bits=3, fsr=3)  # levels 0, +-1, +-2, +-4
    tensor([ 0., -4.,  4.,  1.])
    """
    k, zero = _exponents(x, bits, fsr, signed, base)
    q = exp2_steps(k, steps_per_octave(base), x.dtype)
    if signed:
        q = q * torch.sign(x.detach())
    q = q.masked_fill_(zero, 0.0)
    if not x.requires_grad:
        return q
    return q + (x - x.detach())  # straight-through; unlike x + (q - x).detach(), exactly q forward


def log_levels(bits: int, fsr: int, signed: bool = False, base: str = "2") -> torch.Tensor:
    """All values LogQuant can output, sorted (float64): 0, then 2^(k/s) for k = fsr - 2^m + 1 .. fsr - 1.

    >>> log_levels(2, fsr=1)
    tensor([0.0000, 0.2500, 0.5000, 1.0000], dtype=torch.float64)
    """
    s, m, fsr = steps_per_octave(base), magnitude_bits(bits, signed), _check_fsr(fsr)
    mags = exp2_steps(torch.arange(fsr - 2**m + 1, fsr), s)
    zero = torch.zeros(1, dtype=torch.float64)
    return torch.cat([-mags.flip(0), zero, mags]) if signed else torch.cat([zero, mags])


def fsr_from_max(max_abs: float, base: str = "2") -> int:
    """The fsr whose top code is the max's own code, fsr = Round(s log2 max|x|) + 1, so max|x| is never clipped.

    (The paper treats fsr as a per-layer hyperparameter; this is one data-driven choice.)
    An all-zero tensor has no scale; any fsr maps it to zeros, we return 0.
    """
    s = steps_per_octave(base)
    max_abs = float(max_abs)
    if not math.isfinite(max_abs) or max_abs < 0:
        raise QuantParamError(f"max_abs must be a finite number >= 0, got {max_abs!r}")
    return 0 if max_abs == 0 else int(round(s * math.log2(max_abs))) + 1


def fsr_from_data(x: torch.Tensor, base: str = "2") -> int:
    """``fsr_from_max(max|x|)``."""
    return fsr_from_max(float(check_tensor(x).detach().abs().max()), base)


class LogQuantizer(Quantizer):
    """Fake-quantizes to the log grid; ``fsr`` is fixed, or follows max|x|.

    ``fsr=None`` derives it with ``fsr_from_max``: from the tensor itself on every call when
    ``momentum`` is None (weights), else from a running max updated in training mode as
    max <- (1 - momentum) max + momentum max|x| (activations; eval mode only initialises it).
    ``signed=None`` decides on the first batch: signed if it holds negative values (a network's
    first input), unsigned otherwise (post-ReLU activations).
    """

    def __init__(self, bits: int, signed: bool | None = True, base: str = "2",
                 fsr: int | None = None, momentum: float | None = None):
        super().__init__(bits)
        self.base = base
        steps_per_octave(base)
        self.fsr = None if fsr is None else _check_fsr(fsr)
        self.momentum = None if momentum is None else check_fraction(momentum, name="momentum", high_inclusive=True)
        self.signed = signed
        if signed is not None:
            magnitude_bits(bits, signed)
        self.register_buffer("running_max", torch.tensor(0.0))
        self.register_buffer("num_batches", torch.tensor(0))

    def current_fsr(self, x: torch.Tensor) -> int:
        if self.fsr is not None:
            return self.fsr
        if self.momentum is None:
            return fsr_from_max(float(x.detach().abs().max()), self.base)
        if self.training or int(self.num_batches) == 0:  # eval mode after that: no pass over x at all
            batch_max = x.detach().abs().max().to(self.running_max)
            first = int(self.num_batches) == 0
            self.running_max.copy_(batch_max if first else torch.lerp(self.running_max, batch_max, self.momentum))
            self.num_batches += 1
        return fsr_from_max(float(self.running_max), self.base)

    def quantize_float(self, x: torch.Tensor) -> torch.Tensor:
        if self.signed is None:
            self.signed = bool((x.detach() < 0).any())
        if self.signed and self.bits < 2:
            raise BitWidthError(f"signed log quantization needs bits >= 2 (one bit is the sign), got {self.bits}")
        return log_quantize(x, self.bits, self.current_fsr(x), self.signed, self.base)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}, base={self.base!r}, fsr={self.fsr}, momentum={self.momentum}"


def log_weight_quantizer(bits: int, name: str = "", layer=None) -> LogQuantizer:
    """Factory for ``quantize_model``: signed base-2 log weights, fsr from each layer's max|W|."""
    return LogQuantizer(bits, signed=True, base="2")


def log_act_quantizer(bits: int, name: str = "", layer=None) -> LogQuantizer:
    """Factory for ``quantize_model``: base-2 log activations, fsr from a running max (momentum 0.1)."""
    return LogQuantizer(bits, signed=None, base="2", momentum=0.1)
