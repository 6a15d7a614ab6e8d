"""QIL: quantization interval learning (Jung et al., CVPR 2019).

A learnable interval with centre ``c`` and half-width ``d`` decides which values matter. A *transformer*
maps them into a normalised domain, then a uniform *discretiser* rounds them (straight-through backward).

Weights (``alpha = 0.5 / d``, ``beta = -0.5 c / d + 0.5``, learnable exponent ``gamma``):

    w_hat = 0                                      if |w| < c - d   (pruned)
          = sign(w)                                if |w| > c + d   (clipped)
          = sign(w) (alpha |w| + beta)^gamma       otherwise
    w_q   = round(w_hat * q_D) / q_D,   q_D = 2^(b-1) - 1   (signed: 2^b - 1 levels in [-1, 1])

Activations use ``a`` instead of ``|w|``, no sign and ``gamma = 1``, and ``q_D = 2^b - 1``
(unsigned: ``2^b`` levels in ``[0, 1]``). Both cases are ``clip(alpha |w| + beta, 0, 1)``, which is
how we write them; autograd then gives the paper's gradients for ``w``, ``c``, ``d`` and ``gamma``.

Scale the layer sees: QIL's outputs live in ``[-1, 1]`` / ``[0, 1]``, not in the float range.
``output_scale="normalized"`` keeps that (the paper's choice: the batch norm after each conv absorbs the
scale). ``output_scale="interval"`` multiplies by ``c + d`` (a constant for autograd), so a clipped
value keeps its float size, which matters for a layer with no batch norm after it (the classifier).

We start the interval at ``[0, max|x|]`` (``c = d = max|x| / 2``: nothing pruned or clipped) on the
first tensor seen, and ``gamma = 1``. The paper trains progressively, full precision -> 5 -> 4 -> 3 -> 2
bits: see ``progressive_schedule`` and ``set_bits``. Introduced in the learnable-quantization notebook.
"""

from __future__ import annotations

import torch
from torch import nn

from mpqlab.errors import BitWidthError, PolicyError, QuantParamError, TensorValueError, check_bits, check_positive
from mpqlab.quant.quantizer import Quantizer
from mpqlab.quant.ste import round_ste


def interval_position(v: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``alpha v + beta = (v - c) / (2 d) + 1/2``: 0 at the interval's start ``c - d``, 1 at its end ``c + d``.

    Written as one division, not as ``alpha * v``: for values near 1e30 the gradient of ``alpha`` would be
    the product of two large numbers (the upstream gradient and ``v``), which overflows float32 and
    turns the gradient of ``d`` into NaN.
    """
    return (v - c) / (2 * d) + 0.5


def qil_weight_transform(w: torch.Tensor, c: torch.Tensor, d: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``sign(w) clip(alpha |w| + beta, 0, 1)^gamma`` with ``alpha = 0.5/d``, ``beta = -0.5 c/d + 0.5``."""
    t = torch.clamp(interval_position(w.abs(), c, d), 0.0, 1.0)
    kept = t > 0
    # pow on a safe base: the gradient of 0^gamma wrt gamma is 0 * log(0) = NaN, even in an unused where-branch
    powered = torch.where(kept, torch.where(kept, t, torch.ones_like(t)) ** gamma, torch.zeros_like(t))
    return torch.sign(w) * powered


def qil_act_transform(x: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``clip(alpha x + beta, 0, 1)`` with ``alpha = 0.5/d``, ``beta = -0.5 c/d + 0.5``."""
    return torch.clamp(interval_position(x, c, d), 0.0, 1.0)


def qil_discretize(x_hat: torch.Tensor, levels: int) -> torch.Tensor:
    """``round(x_hat * q_D) / q_D`` with the straight-through estimator."""
    return round_ste(x_hat * levels) / levels


class QILQuantizer(Quantizer):
    """QIL quantizer with learnable ``c``, ``d`` (and ``gamma`` for ``role="weight"``)."""

    def __init__(self, bits: int, role: str = "weight", *, output_scale: str = "normalized",
                 init_c: float | None = None, init_d: float | None = None, init_gamma: float = 1.0):
        if role not in ("weight", "act"):
            raise QuantParamError(f"role must be 'weight' or 'act', got {role!r}")
        if output_scale not in ("normalized", "interval"):
            raise QuantParamError(f"output_scale must be 'normalized' or 'interval', got {output_scale!r}")
        self.min_bits = 2 if role == "weight" else 1  # 1-bit weights would give q_D = 2^0 - 1 = 0
        super().__init__(bits)
        self.role, self.output_scale = role, output_scale
        if (init_c is None) != (init_d is None):
            raise QuantParamError("give both init_c and init_d, or neither (then they start at max|x| / 2)")
        if init_c is not None and (float(init_c) < 0 or float(init_c) != float(init_c)):
            raise QuantParamError(f"init_c must be a number >= 0, got {init_c!r}")
        d0 = 1.0 if init_d is None else check_positive(init_d, name="init_d")
        self.c = nn.Parameter(torch.tensor(1.0 if init_c is None else float(init_c)))
        self.d = nn.Parameter(torch.tensor(d0))
        if role == "weight":
            self.gamma = nn.Parameter(torch.tensor(check_positive(init_gamma, name="init_gamma")))
        self.register_buffer("initialized", torch.tensor(init_c is not None))

    @property
    def levels(self) -> int:
        """``q_D``: ``2^(b-1) - 1`` for weights (signed), ``2^b - 1`` for activations."""
        return 2 ** (self.bits - 1) - 1 if self.role == "weight" else 2**self.bits - 1

    def quantize_float(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            self._initialize(x.detach())
        d = float(self.d.detach())
        if not d > 0:
            raise QuantParamError(f"QIL interval half-width d must stay positive, it is now {d:.4g}")
        if self.role == "weight":
            gamma = float(self.gamma.detach())
            if not gamma > 0:
                raise QuantParamError(f"QIL exponent gamma must stay positive, it is now {gamma:.4g}")
            x_q = qil_discretize(qil_weight_transform(x, self.c, self.d, self.gamma), self.levels)
        else:
            x_q = qil_discretize(qil_act_transform(x, self.c, self.d), self.levels)
        if self.output_scale == "interval":
            x_q = x_q * (self.c + self.d).detach()
        return x_q

    def _initialize(self, x: torch.Tensor) -> None:
        top = float(x.abs().max()) if self.role == "weight" else float(x.max())
        if top != top or top in (float("inf"), float("-inf")):
            raise TensorValueError("cannot initialise the QIL interval from a tensor holding NaN/Inf values")
        if top > 0:  # otherwise wait for a tensor with something to quantize
            with torch.no_grad():
                self.c.fill_(top / 2)
                self.d.fill_(top / 2)
            self.initialized.fill_(True)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, role={self.role}, output_scale={self.output_scale}"


def qil_weight_quantizer(bits: int, name: str = "", layer: nn.Module | None = None) -> QILQuantizer:
    """Factory for ``quantize_model``: QIL weights rescaled by ``c + d`` (see the module doc)."""
    return QILQuantizer(bits, "weight", output_scale="interval")


def qil_act_quantizer(bits: int, name: str = "", layer: nn.Module | None = None) -> QILQuantizer:
    """Factory for ``quantize_model``: QIL activations rescaled by ``c + d`` (see the module doc)."""
    return QILQuantizer(bits, "act", output_scale="interval")


def progressive_schedule(start: int = 5, end: int = 2) -> list[int]:
    """The bit-widths of QIL's progressive training after full precision: ``[start, start - 1, ..., end]``."""
    start, end = check_bits(start, name="start"), check_bits(end, name="end")
    if start < end:
        raise BitWidthError(f"progressive training lowers the bit-width: start={start} must be >= end={end}")
    return list(range(start, end - 1, -1))


def set_bits(model: nn.Module, bits: int, exclude: tuple[str, ...] = ()) -> int:
    """Set ``bits`` on every QIL quantizer, except in layers named in ``exclude``; return how many changed.

    ``exclude`` holds layer names (``"conv1.conv"``, ``"fc"``), e.g. the first and last layers kept at 8 bits.
    """
    modules = dict(model.named_modules())
    unknown = [name for name in exclude if name not in modules]
    if unknown:
        raise PolicyError(f"exclude names layers the model does not have: {unknown}")
    changed = 0
    for name, module in modules.items():
        if name in exclude:
            continue
        for q in (getattr(module, "w_quantizer", None), getattr(module, "a_quantizer", None)):
            if isinstance(q, QILQuantizer):
                q.bits = bits
                changed += 1
    return changed
