"""Quantizing h-swish outputs: shift them by +3/8 before an unsigned grid, fold the shift into the next conv.

h-swish (Howard et al. 2019) is ``h(x) = x ReLU6(x + 3) / 6``; it is negative on (-3, 0) with its
minimum ``h(-1.5) = -3/8``. The usual activation grids both fit it badly:

- **unsigned** ``[0, (2^b - 1) s]`` clips every negative output to 0;
- **signed** ``[-2^(b-1) s, (2^(b-1) - 1) s]`` spends half its codes on ``[-hi, 0)`` where only
  ``[-3/8, 0)`` ever occurs: most negative codes are wasted.

PROFIT (Park & Yoo, ECCV 2020) shifts the input of the quantizer so that it starts at 0,

    x_hat = Q_unsigned(x + 3/8) - 3/8,

and removes the shift again inside the next convolution, where it is a constant:

    W * x = W * (x + d) - d sum(W)     (d = 3/8, sum over a filter's in-channels and taps)

so the deployed conv reads the shifted (unsigned integer) input and its bias becomes ``b - d sum W``.
With zero padding the identity only holds if the border is padded with the shifted image of 0,
i.e. with ``d`` instead of 0 (the paper calls its version "negative padding"). Introduced in notebook 07.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mpqlab.errors import BitWidthError, QuantParamError, check_bits, check_tensor
from mpqlab.quant.lsq import LSQQuantizer
from mpqlab.quant.quantizer import Quantizer

HSWISH_SHIFT = 3.0 / 8.0  # -min h-swish(x), reached at x = -1.5


def range_quantize(x: torch.Tensor, low: float, high: float, bits: int) -> torch.Tensor:
    """Fake-quantize onto ``2^b`` evenly spaced levels from ``low`` to ``high`` (inclusive).

    ``scale = (high - low) / (2^b - 1)``, ``x_hat = low + scale * round(clip((x - low) / scale, 0, 2^b - 1))``.
    The three h-swish grids are ``low = 0`` (unsigned), ``low = -high * 2^(b-1) / (2^(b-1) - 1)``
    (signed, symmetric steps around 0) and ``low = -3/8`` (shifted).

    >>> range_quantize(torch.tensor([-1.0, 0.2, 0.9]), 0.0, 3.0, 2)
    tensor([0., 0., 1.])
    """
    bits = check_bits(bits)
    if not high > low:
        raise QuantParamError(f"the grid needs high > low, got low={low}, high={high}")
    levels = 2**bits - 1
    scale = (high - low) / levels
    return low + scale * torch.round(torch.clamp((x - low) / scale, 0, levels))


def grid_low(scheme: str, high: float, bits: int) -> float:
    """The lowest level of an h-swish grid reaching up to ``high``: 'unsigned', 'signed' or 'shifted'."""
    if scheme == "unsigned":
        return 0.0
    if scheme == "signed":  # codes -2^(b-1) .. 2^(b-1) - 1 with the top code at `high`
        half = 2 ** (check_bits(bits, low=2) - 1)
        return -high * half / (half - 1)
    if scheme == "shifted":
        return -HSWISH_SHIFT
    raise QuantParamError(f"scheme must be 'unsigned', 'signed' or 'shifted', got {scheme!r}")


def codes_used(x_hat: torch.Tensor, low: float, high: float, bits: int) -> int:
    """How many of the ``2^b`` codes of the grid ``[low, high]`` the fake-quantized ``x_hat`` actually uses."""
    scale = (high - low) / (2**bits - 1)
    return int(torch.unique(torch.round((x_hat - low) / scale)).numel())


def compare_schemes(x: torch.Tensor, bits: int, high: float) -> list[dict]:
    """Quantize h-swish outputs ``x`` on the unsigned, signed and shifted grids that reach ``high``.

    One row per scheme: its range, the mean squared error, the codes used out of ``2^b`` and the
    fraction of negative inputs that came out as exactly 0 ("clipped").
    """
    check_tensor(x, name="h-swish outputs")
    rows = []
    negative = x < 0
    for scheme in ("unsigned", "signed", "shifted"):
        low = grid_low(scheme, high, bits)
        x_hat = range_quantize(x, low, high, bits)
        zeroed = (x_hat[negative] == 0).float().mean().item() if negative.any() else 0.0
        rows.append({"scheme": scheme, "bits": bits, "low": low, "high": high,
                     "mse": float(((x_hat - x) ** 2).mean()), "codes_used": codes_used(x_hat, low, high, bits),
                     "codes": 2**bits, "negatives_zeroed": zeroed})
    return rows


class ShiftedActQuantizer(Quantizer):
    """Unsigned LSQ applied to ``x + shift``, then shifted back: ``x_hat = Q(x + shift) - shift``.

    During training this *is* the simulated deployed arithmetic: the conv that reads ``x_hat``
    gives exactly what ``fold_shift`` 's conv gives on ``Q(x + shift)``. ``bit_options`` as in ``LSQQuantizer``.
    """

    def __init__(self, bits: int, shift: float = HSWISH_SHIFT, bit_options: list[int] | None = None):
        super().__init__(bits)
        self.shift = float(shift)
        self.lsq = LSQQuantizer(bits, "act", bit_options=bit_options)

    def bits_changed(self) -> None:
        try:
            self.lsq.bits = self.bits
        except BitWidthError:
            self._bits = self.lsq.bits  # stay consistent with the inner quantizer
            raise

    def quantize_float(self, x: torch.Tensor) -> torch.Tensor:
        return self.lsq(x + self.shift) - self.shift

    def extra_repr(self) -> str:
        return f"bits={self.bits}, shift={self.shift:.4g}"


class ShiftFoldedConv2d(nn.Module):
    """A conv that reads ``x' = x + shift`` and returns ``conv(x)``: pad with ``shift``, bias ``b - shift sum W``."""

    def __init__(self, conv: nn.Conv2d, shift: float):
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise QuantParamError(f"fold_shift needs numeric zero padding, got padding={conv.padding!r}, "
                                  f"padding_mode={conv.padding_mode!r}")
        self.shift = float(shift)
        self.pad = (conv.padding[1], conv.padding[1], conv.padding[0], conv.padding[0])  # F.pad order: W then H
        self.stride, self.dilation, self.groups = conv.stride, conv.dilation, conv.groups
        weight = conv.weight.detach()  # (C_out, C_in / groups, k, k)
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.weight = nn.Parameter(weight.clone())
        self.bias = nn.Parameter(bias - self.shift * weight.sum(dim=(1, 2, 3)))  # (C_out,)

    def forward(self, x_shifted: torch.Tensor) -> torch.Tensor:  # (N, C_in, H, W), already + shift
        x = F.pad(x_shifted, self.pad, value=self.shift)  # the border holds the shifted image of 0
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def fold_shift(conv: nn.Conv2d, shift: float = HSWISH_SHIFT) -> ShiftFoldedConv2d:
    """The deployed form of ``conv`` after a shifted quantizer: ``fold_shift(conv)(x + shift) == conv(x)``."""
    return ShiftFoldedConv2d(conv, shift)


def input_activations(model: nn.Module) -> dict[str, str]:
    """``{layer name: 'hswish' | 'relu' | 'none'}``: the activation that feeds each conv/linear layer.

    'none' means a signed input (the image, or a linear bottleneck plus its residual). Walks modules in
    definition order and remembers the last activation seen, which matches the forward order of the
    networks in ``mpqlab.models`` (a conv right after a conv-BN-activation block, pooling in between).
    """
    kinds, last = {}, "none"
    for name, module in model.named_modules():
        if isinstance(module, nn.Hardswish):
            last = "hswish"
        elif isinstance(module, (nn.ReLU, nn.ReLU6)):
            last = "relu"
        elif isinstance(module, nn.Identity):
            last = "none"
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            kinds[name] = last
            last = "none"
    return kinds


def act_quantizer_for(kind: str, scheme: str, bits: int) -> Quantizer:
    """The LSQ activation quantizer for an input of ``kind`` ('hswish', 'relu', 'none').

    ReLU outputs get an unsigned grid, signed inputs a signed one, and h-swish outputs the grid of
    ``scheme``: 'unsigned' (clips the negatives), 'signed' or 'shifted' (PROFIT).
    """
    if kind == "relu":
        return LSQQuantizer(bits, "act")
    if kind == "none":
        return LSQQuantizer(bits, "act", signed=True)
    if kind != "hswish":
        raise QuantParamError(f"input kind must be 'hswish', 'relu' or 'none', got {kind!r}")
    if scheme == "shifted":
        return ShiftedActQuantizer(bits)
    if scheme in ("unsigned", "signed"):
        return LSQQuantizer(bits, "act", signed=scheme == "signed")
    raise QuantParamError(f"scheme must be 'unsigned', 'signed' or 'shifted', got {scheme!r}")
