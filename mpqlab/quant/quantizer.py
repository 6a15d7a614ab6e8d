"""The ``Quantizer`` base class: a module that maps a float tensor to its fake-quantized copy.

A quantizer's ``forward(x)`` returns a tensor of the same shape and dtype as ``x`` whose
values lie on the quantizer's grid (``x_hat``, "fake-quantized"): the network keeps running in
float, but every value it sees is one an integer (or log, or binary) format can represent.
Gradients pass through with a straight-through estimator or whatever the method defines.

Every method in the workbook (uniform, log, weighted-entropy, outlier-aware, PACT, QIL, LSQ,
LSQ+, binary) is a subclass. Layers only hold quantizers, so a new method never edits a layer.

Which tensors a quantizer takes (one policy for every quantizer and observer in ``mpqlab.quant``):

- floating point only: an integer or bool tensor raises ``TensorValueError`` ("convert it with
  x.float()") instead of being quantized with a scale that torch truncates to an integer;
- float16 and bfloat16 are computed in float32 and the result is returned in the input dtype
  (``1 / scale`` and squared errors overflow float16; state such as LSQ's step stays float32);
  float32 and float64 are computed as they are;
- empty tensors, NaN and Inf raise ``TensorValueError`` naming how many values are bad, *before* any
  state (a running max, a lazily initialised step) is touched, so one bad batch changes nothing.

``Quantizer.forward`` applies this policy, then calls the subclass's ``quantize_float(x)``. The value
checks cost one reduction (a sum) and are skipped while ``torch.compile`` traces.
"""

from __future__ import annotations

import torch
from torch import nn

from mpqlab.errors import check_bits, check_floating, check_tensor

LOW_PRECISION = (torch.float16, torch.bfloat16)  # computed in float32, returned in their own dtype


def check_quantizer_input(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    """Raise TensorValueError unless ``x`` is a non-empty floating-point tensor of finite values (see above)."""
    return check_tensor(check_floating(x, name=name), name=name)


def to_compute_dtype(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the dtype a quantizer computes in: float16/bfloat16 become float32, other floats stay."""
    return x.float() if x.dtype in LOW_PRECISION else x


class Quantizer(nn.Module):
    """Base class. Subclasses implement ``quantize_float(x) -> x_hat`` and may override ``bits_changed``.

    ``forward(x)`` checks ``x`` and handles low-precision dtypes (module docstring), then calls
    ``quantize_float`` with a finite, non-empty float32 or float64 tensor.

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling():  # value checks read a tensor back, which breaks a compiled graph
            check_quantizer_input(x, name=f"the input of {type(self).__name__}")
        x_hat = self.quantize_float(to_compute_dtype(x))
        return x_hat if x_hat.dtype == x.dtype else x_hat.to(x.dtype)

    def quantize_float(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """The method itself, on a checked tensor of float32 or float64."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class FullPrecision(Quantizer):
    """The identity: stands in where a layer's weights or activations are not quantized (``bits`` is 32).

    It quantizes nothing, so the input policy above does not apply: any tensor passes through unchecked.
    """

    max_bits = 32

    def __init__(self):
        super().__init__(32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return "full precision"
