"""LSQ+: LSQ with a learnable offset and better initialisation (Bhalgat et al., CVPR Workshops 2020).

Activations get an offset ``beta`` (our ``zero_point`` in float units), so the grid can slide to
cover negative values (Swish, or a normalised input image) without spending a sign bit:

    v_bar = round(clip((v - beta) / s, q_min, q_max)),      v_hat = s * v_bar + beta

with the unsigned range ``q_min = 0``, ``q_max = 2^b - 1``. The gradients are LSQ's for ``s`` (with
``v - beta`` in place of ``v``) plus ``d v_hat / d beta = 0`` inside the range and ``1`` outside it.
The same gradient scale ``g`` multiplies both (as in PyTorch's learnable fake-quantize).

Initialisation (computed on the first tensor seen, like LSQ's):

- activations, "minmax":  ``s = (max - min) / (q_max - q_min)``, ``beta = min - q_min * s``;
- activations, "mse":     the paper minimises ``||v_hat - v||^2`` over ``(s, beta)``; we search one
  dimension, the upper end ``hi`` of the range ``[min, hi]`` on a grid of 50 values, with ``beta = min``;
- weights (symmetric, no offset): ``s = max(|mu - 3 sigma|, |mu + 3 sigma|) / 2^(b-1)``.

A constant activation tensor (``min = max``) has no spread to fit: its range is widened to contain 0,
``[min(c, 0), max(c, 0)]``, so ``c`` lands exactly on an end of the grid. An all-zero tensor (activations
or weights) is quantized exactly by any step; the step waits for the first tensor with a non-zero value.

Changing ``bits`` re-initialises on the next forward pass: a step learned for one grid does not fit another.
Introduced in the learnable-quantization notebook (PACT, QIL, LSQ, LSQ+).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mpqlab.errors import QuantParamError, TensorValueError
from mpqlab.quant.lsq import check_step, lsq_quantize, lsq_range
from mpqlab.quant.quantizer import Quantizer


def lsq_plus_weight_init(w: torch.Tensor, bits: int) -> float:
    """``s = max(|mu - 3 sigma|, |mu + 3 sigma|) / 2^(b-1)`` from the weights' mean and standard deviation."""
    mu, sigma = float(w.mean()), float(w.std(unbiased=False))
    return max(abs(mu - 3 * sigma), abs(mu + 3 * sigma)) / 2 ** (bits - 1)


def lsq_plus_minmax_init(x: torch.Tensor, q_min: int, q_max: int) -> tuple[float, float]:
    """``(s, beta)`` with ``s = (max - min) / (q_max - q_min)`` and ``beta = min - q_min * s``."""
    lo, hi = float(x.min()), float(x.max())
    s = (hi - lo) / (q_max - q_min)
    return s, lo - q_min * s


def lsq_plus_mse_init(x: torch.Tensor, q_min: int, q_max: int, n_grid: int = 50) -> tuple[float, float]:
    """``(s, beta)`` minimising ``||v_hat - v||^2`` over ranges ``[min, hi]``, ``hi`` on a grid up to ``max``."""
    x = x.detach().flatten()
    x = x[:: max(1, x.numel() // 65536)].double()  # a strided sample places a range; float64: squared errors
    lo, top = float(x.min()), float(x.max())
    best = (math.inf, 0.0)
    for frac in torch.linspace(1.0 / n_grid, 1.0, n_grid).tolist():
        s = (top - lo) * frac / (q_max - q_min)
        x_hat = torch.clamp(torch.round((x - lo) / s), q_min, q_max) * s + lo
        err = float(((x_hat - x) ** 2).sum())
        best = min(best, (err, s))
    return best[1], lo - q_min * best[1]


class LSQPlusQuantizer(Quantizer):
    """LSQ+ quantizer: ``role="act"`` is asymmetric with a learnable offset, ``role="weight"`` symmetric signed."""

    def __init__(self, bits: int, role: str = "act", *, init: str = "minmax", grad_scale: bool = True):
        if role not in ("weight", "act"):
            raise QuantParamError(f"role must be 'weight' or 'act', got {role!r}")
        if init not in ("minmax", "mse"):
            raise QuantParamError(f"init must be 'minmax' or 'mse', got {init!r}")
        self.min_bits = 2 if role == "weight" else 1  # a signed 1-bit grid has no positive level
        super().__init__(bits)
        self.role, self.init, self.grad_scale = role, init, grad_scale
        self.step = nn.Parameter(torch.tensor(1.0))
        self.offset = nn.Parameter(torch.tensor(0.0)) if role == "act" else None
        self.register_buffer("initialized", torch.tensor(False))
        # Python mirror of `initialized`, so that torch.compile does not break the graph reading a tensor every call
        self._ready = False
        self.register_load_state_dict_post_hook(_forget_ready)

    def bits_changed(self) -> None:
        self.initialized.fill_(False)
        self._ready = False

    def quantize_float(self, x: torch.Tensor) -> torch.Tensor:
        q_min, q_max = lsq_range(self.bits, signed=self.role == "weight")
        if not self._ready:
            if not bool(self.initialized):
                self._initialize(x.detach(), q_min, q_max)
            self._ready = bool(self.initialized)
        check_step(self.step)
        g = 1.0
        if self.grad_scale:
            n = x.numel() if self.role == "weight" or x.dim() < 2 else x[0].numel()
            g = 1.0 / math.sqrt(n * q_max)
        return lsq_quantize(x, self.step, q_min, q_max, g, offset=self.offset)

    def _initialize(self, x: torch.Tensor, q_min: int, q_max: int) -> None:
        if self.role == "weight":
            s, beta = lsq_plus_weight_init(x, self.bits), None
        elif bool(x.min() == x.max()):  # a constant: widen its range to contain 0 (module docstring)
            s, beta = lsq_plus_minmax_init(torch.stack([x.min().clamp(max=0), x.max().clamp(min=0)]), q_min, q_max)
        elif self.init == "minmax":
            s, beta = lsq_plus_minmax_init(x, q_min, q_max)
        else:
            s, beta = lsq_plus_mse_init(x, q_min, q_max)
        if not s > 0:  # all zero: any step is exact, wait for a tensor with something to quantize
            return
        if not math.isfinite(s):
            raise TensorValueError(f"the LSQ+ initial step overflowed ({s}): the input's range is too wide for "
                                   f"{x.dtype}; scale the input down")
        with torch.no_grad():
            self.step.fill_(s)
            if beta is not None:
                self.offset.fill_(beta)
        self.initialized.fill_(True)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, role={self.role}, init={self.init}"


def lsq_plus_weight_quantizer(bits: int, name: str = "", layer: nn.Module | None = None) -> LSQPlusQuantizer:
    """Factory for ``quantize_model``: a symmetric LSQ+ weight quantizer (mu +- 3 sigma initialisation)."""
    return LSQPlusQuantizer(bits, "weight")


def lsq_plus_act_quantizer(bits: int, name: str = "", layer: nn.Module | None = None) -> LSQPlusQuantizer:
    """Factory for ``quantize_model``: an asymmetric LSQ+ activation quantizer (min-max initialisation)."""
    return LSQPlusQuantizer(bits, "act")


def _forget_ready(module: LSQPlusQuantizer, incompatible_keys) -> None:
    module._ready = False  # a loaded state may say differently
