"""The ``Quantizer`` base class: a module that maps a float tensor to its fake-quantized copy.

A quantizer's ``forward(x)`` returns a tensor of the same shape and dtype as ``x`` whose
values lie on the quantizer's grid (``x_hat``, "fake-quantized"): the network keeps running in
float, but every value it sees is one an integer (or log, or binary) format can represent.
Gradients pass through with a straight-through estimator or whatever the method defines.

Every method in the workbook (uniform, log, weighted-entropy, outlier-aware, PACT, QIL, LSQ,
LSQ+, binary) is a subclass. Layers only hold quantizers, so a new method never edits a layer.
"""

from __future__ import annotations

import torch
from torch import nn

from mpqlab.errors import check_bits


class Quantizer(nn.Module):
    """Base class. Subclasses implement ``forward(x) -> x_hat`` and may override ``bits_changed``.

    ``bits`` is validated on every assignment (1..16 by default; subclasses may narrow the
    range with ``min_bits``/``max_bits``), so ``quantizer.bits = 0`` fails at once with a
    clear message instead of producing NaNs later.
    """

    min_bits = 1
    max_bits = 16

    def __init__(self, bits: int):
        super().__init__()
        self._bits = check_bits(bits, low=self.min_bits, high=self.max_bits)

    @property
    def bits(self) -> int:
        return self._bits

    @bits.setter
    def bits(self, value: int) -> None:
        self._bits = check_bits(value, low=self.min_bits, high=self.max_bits)
        self.bits_changed()

    def bits_changed(self) -> None:
        """Hook for subclasses whose parameters depend on the bit-width (e.g. one LSQ step per bit-width)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class FullPrecision(Quantizer):
    """The identity: stands in where a layer's weights or activations are not quantized (``bits`` is 32)."""

    max_bits = 32

    def __init__(self):
        super().__init__(32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return "full precision"
