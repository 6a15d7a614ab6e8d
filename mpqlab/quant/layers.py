"""Quantized Conv2d and Linear layers: each holds a weight quantizer and an input-activation quantizer.

They subclass ``nn.Conv2d`` / ``nn.Linear``, so a quantized model keeps its parameter names
(``weight``, ``bias``) and every tool that walks convolutions (the cost model, the search) still
sees them. The forward pass is the float layer applied to quantized inputs and weights:

    y = conv(a_quantizer(x), w_quantizer(W)) + b

The layer knows nothing about how either quantizer works; that is what makes methods pluggable.
"""

from __future__ import annotations

import torch
from torch import nn

from mpqlab.quant.quantizer import FullPrecision, Quantizer


def _check_quantizer(q, role: str) -> Quantizer:
    if q is None:
        return FullPrecision()
    if not isinstance(q, nn.Module):
        raise TypeError(f"{role} must be a Quantizer module (or None for full precision), got {type(q).__name__}")
    return q


class QuantConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose input and weight pass through quantizers first."""

    def __init__(self, *args, w_quantizer: Quantizer | None = None, a_quantizer: Quantizer | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.w_quantizer = _check_quantizer(w_quantizer, "w_quantizer")
        self.a_quantizer = _check_quantizer(a_quantizer, "a_quantizer")

    @classmethod
    def from_float(cls, conv: nn.Conv2d, w_quantizer=None, a_quantizer=None) -> "QuantConv2d":
        """Wrap an existing conv; the new layer shares its weight and bias tensors."""
        q = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size,
            stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
            groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
            w_quantizer=w_quantizer, a_quantizer=a_quantizer,
            device=conv.weight.device, dtype=conv.weight.dtype,
        )
        q.weight = conv.weight
        q.bias = conv.bias
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.a_quantizer(x), self.w_quantizer(self.weight), self.bias)


class QuantLinear(nn.Linear):
    """``nn.Linear`` whose input and weight pass through quantizers first."""

    def __init__(self, *args, w_quantizer: Quantizer | None = None, a_quantizer: Quantizer | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.w_quantizer = _check_quantizer(w_quantizer, "w_quantizer")
        self.a_quantizer = _check_quantizer(a_quantizer, "a_quantizer")

    @classmethod
    def from_float(cls, linear: nn.Linear, w_quantizer=None, a_quantizer=None) -> "QuantLinear":
        """Wrap an existing linear layer; the new layer shares its weight and bias tensors."""
        q = cls(
            linear.in_features, linear.out_features, bias=linear.bias is not None,
            w_quantizer=w_quantizer, a_quantizer=a_quantizer,
            device=linear.weight.device, dtype=linear.weight.dtype,
        )
        q.weight = linear.weight
        q.bias = linear.bias
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self.a_quantizer(x), self.w_quantizer(self.weight), self.bias)
