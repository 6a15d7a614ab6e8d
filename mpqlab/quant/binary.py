"""Binary weights and activations: BinaryConnect (Courbariaux et al. 2015) and XNOR-Net (Rastegari et al. 2016).

Weights keep only their sign, times one scale per output channel that XNOR-Net derives as the best
L2 fit (``ch_axis = 0``, ``n`` weights in the channel):

    W_b = alpha * sign(W),        alpha = mean(|W|) over the channel = ||W||_1 / n

Activations keep only their sign. Backward both use the clipped straight-through estimator
``sign_ste`` (gradient 1 where ``|x| <= 1``, else 0); ``alpha`` stays in the graph, so autograd adds
the ``sign(W_i) sign(W_j) / n`` terms of which XNOR-Net's gradient ``1/n + alpha 1[|W_i| <= 1]`` keeps the diagonal.

Sign activations need inputs centred on zero (XNOR-Net's block is BN -> sign -> conv). After a ReLU
every input is >= 0 and ``sign`` maps them all to +1: on the workbook's ReLU models use a 1-bit
*unsigned* quantizer (``LSQQuantizer(1, "act")``, levels {0, s}) instead.

Why binary is fast: with ``+1 -> 1`` and ``-1 -> 0`` the dot product of two ``n``-vectors of +-1 is
``2 popcount(XNOR(a, w)) - n``: matching bits contribute +1, the others -1 (see ``xnor_popcount_dot``).
Introduced in the binary-networks notebook.
"""

from __future__ import annotations

import torch
from torch import nn

from mpqlab.errors import TensorValueError
from mpqlab.quant.lsq import LSQQuantizer
from mpqlab.quant.policy import Policy, uniform_policy
from mpqlab.quant.quantizer import Quantizer
from mpqlab.quant.ste import sign_ste


def binarize_weight(w: torch.Tensor, ch_axis: int = 0) -> torch.Tensor:
    """``alpha * sign(w)`` with ``alpha = mean |w|`` over every axis but ``ch_axis`` (one per output channel)."""
    dims = [d for d in range(w.dim()) if d != ch_axis % max(w.dim(), 1)]
    alpha = w.abs().mean(dim=dims, keepdim=True) if dims else w.abs()  # (C_out, 1, 1, 1) for a conv
    return sign_ste(w) * alpha


class BinaryWeightQuantizer(Quantizer):
    """XNOR-Net weights: sign times the per-output-channel mean of ``|W|``."""

    min_bits = max_bits = 1

    def __init__(self, ch_axis: int = 0):
        super().__init__(1)
        self.ch_axis = ch_axis

    def quantize_float(self, w: torch.Tensor) -> torch.Tensor:
        return binarize_weight(w, self.ch_axis)


class BinaryActQuantizer(Quantizer):
    """Sign activations (+1 for x >= 0, else -1) with the clipped straight-through estimator."""

    min_bits = max_bits = 1

    def __init__(self):
        super().__init__(1)

    def quantize_float(self, x: torch.Tensor) -> torch.Tensor:
        return sign_ste(x)


def binary_weight_quantizer(bits: int, name: str = "", layer: nn.Module | None = None) -> Quantizer:
    """Factory for ``quantize_model``: binary weights at 1 bit, LSQ weights otherwise (the first and last layers)."""
    return BinaryWeightQuantizer() if bits == 1 else LSQQuantizer(bits, "weight")


def binary_act_quantizer(bits: int, name: str = "", layer: nn.Module | None = None) -> Quantizer:
    """Factory for ``quantize_model``: sign activations at 1 bit, otherwise a *signed* LSQ quantizer.

    Signed, because the first layer's input (a normalised image) can be negative; at 8 bits the spare
    sign bit costs little after a ReLU.
    """
    return BinaryActQuantizer() if bits == 1 else LSQQuantizer(bits, "act", signed=True)


def binary_policy(model: nn.Module, first_last_bits: int = 8) -> Policy:
    """1-bit weights and activations everywhere except the first and last layers, kept at ``first_last_bits``."""
    return uniform_policy(model, 1, 1, first_last_bits=first_last_bits)


def to_bits(x: torch.Tensor) -> torch.Tensor:
    """Encode signs as bits: ``x >= 0 -> 1``, ``x < 0 -> 0`` (uint8)."""
    return (x >= 0).to(torch.uint8)


_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)  # bits set in each byte


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack a {0, 1} tensor ``(..., n)`` into bytes ``(..., ceil(n / 8))``, first bit highest, padded with 0."""
    n = bits.shape[-1]
    pad = (-n) % 8
    b = torch.nn.functional.pad(bits.to(torch.int64), (0, pad)).reshape(*bits.shape[:-1], -1, 8)  # (..., n_bytes, 8)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.int64)
    return (b * weights).sum(-1).to(torch.uint8)


def xnor_popcount_dot(a_bits: torch.Tensor, w_bits: torch.Tensor) -> torch.Tensor:
    """Dot product of two +-1 vectors given as {0, 1} bits ``(..., n)``: ``2 popcount(XNOR(a, w)) - n``.

    Works on packed bytes, as a binary accelerator would; the ``pad`` zero bits appended by packing
    agree in both operands, so they are taken out of the count. Shapes broadcast like ``(a * w).sum(-1)``.

    >>> xnor_popcount_dot(torch.tensor([1, 0, 1]), torch.tensor([1, 1, 1]))  # (+1)(+1) + (-1)(+1) + (+1)(+1)
    tensor(1)
    """
    if a_bits.shape[-1] != w_bits.shape[-1]:
        raise TensorValueError(f"vector lengths differ: {a_bits.shape[-1]} and {w_bits.shape[-1]}")
    n = a_bits.shape[-1]
    if n == 0:
        raise TensorValueError("cannot take the dot product of empty vectors")
    for name, t in (("a_bits", a_bits), ("w_bits", w_bits)):
        if not bool(((t == 0) | (t == 1)).all()):
            raise TensorValueError(f"{name} must hold only 0 and 1 (use to_bits to encode signs)")
    a, w = pack_bits(a_bits), pack_bits(w_bits)
    xnor = torch.bitwise_not(torch.bitwise_xor(a, w))  # 1 where the bits agree
    pad = (-n) % 8
    matches = _POPCOUNT[xnor.to(torch.int64)].sum(-1) - pad
    return 2 * matches - n
