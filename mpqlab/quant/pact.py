"""PACT: parameterized clipping activation (Choi et al. 2018), with DoReFa weights as in the paper's experiments.

PACT replaces an activation's unbounded range by a learned clip ``alpha`` and quantizes ``[0, alpha]``
uniformly to ``k`` bits:

    y   = clip(x, 0, alpha)
    y_q = round(y * (2^k - 1) / alpha) * alpha / (2^k - 1)

Backward, the rounding is a straight-through estimator, so ``d y_q / d x = 1`` for ``0 <= x < alpha``
(0 elsewhere) and ``d y_q / d alpha = 1`` where ``x >= alpha``, 0 elsewhere. Left alone ``alpha``
only grows (every clipped value pushes it up), so the paper adds ``lambda * alpha^2`` to the loss:
``pact_l2(model)`` sums the ``alpha^2`` for you. PACT starts from a large ``alpha`` (we use 10).

PACT expects non-negative inputs (it replaces a ReLU): a normalised image entering the first layer loses
its negative half, so keep that layer's activations in full precision or use a signed quantizer there.

Weights: the paper quantizes them with DoReFa-Net (Zhou et al. 2016),

    w_t = tanh(w) / (2 max|tanh(w)|) + 1/2,        w_q = 2 round(w_t (2^k - 1)) / (2^k - 1) - 1

a grid of ``2^k`` levels in ``[-1, 1]``. ``output_scale="max_abs"`` multiplies ``w_q`` by ``max|w|``
(a constant for autograd) so a pretrained layer keeps the size of its weights; "normalized" keeps [-1, 1].
An all-zero (pruned) weight has ``max|tanh w| = 0`` and the formula reads 0/0: we return zeros, with the
straight-through gradient 1 (the limit of the "max_abs" gradient ``max|w| (1 - tanh^2 w) / max|tanh w|``).
Introduced in the learnable-quantization notebook (PACT, QIL, LSQ, LSQ+).
"""

from __future__ import annotations

import torch
from torch import nn

from mpqlab.errors import QuantParamError, check_positive
from mpqlab.quant.quantizer import Quantizer
from mpqlab.quant.ste import round_ste


def pact_quantize(x: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:
    """``round(clip(x, 0, alpha) (2^k - 1) / alpha) alpha / (2^k - 1)`` with PACT's gradients (see module doc).

    >>> pact_quantize(torch.tensor([-1.0, 0.4, 0.9, 3.0]), torch.tensor(2.0), 2)
    tensor([0.0000, 0.6667, 0.6667, 2.0000])
    """
    levels = 2**bits - 1
    # torch.where (not torch.minimum, which splits the gradient at ties) gives d y / d alpha = 1 for x >= alpha
    y = torch.where(x >= alpha, alpha, x.clamp_min(0.0))
    y_q = torch.round(y * levels / alpha) * alpha / levels
    return y + (y_q - y).detach()


class PACTQuantizer(Quantizer):
    """PACT activation quantizer with one learnable clip ``alpha`` per tensor."""

    def __init__(self, bits: int, alpha: float = 10.0):
        super().__init__(bits)
        self.alpha = nn.Parameter(torch.tensor(check_positive(alpha, name="alpha")))

    def quantize_float(self, x: torch.Tensor) -> torch.Tensor:
        alpha = float(self.alpha.detach())
        if not alpha > 0:
            raise QuantParamError(f"PACT alpha must stay positive, it is now {alpha:.4g}; "
                                  "lower the learning rate or the L2 coefficient on alpha")
        return pact_quantize(x, self.alpha, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, alpha={float(self.alpha.detach()):.4g}"


def pact_l2(model: nn.Module) -> torch.Tensor:
    """``sum(alpha^2)`` over the model's PACT quantizers; add ``lambda * pact_l2(model)`` to the loss."""
    alphas = [m.alpha for m in model.modules() if isinstance(m, PACTQuantizer)]
    if not alphas:
        return torch.zeros(())
    return torch.stack([a**2 for a in alphas]).sum()


def dorefa_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa weights ``2 round(w_t (2^k - 1)) / (2^k - 1) - 1`` with ``w_t = tanh(w) / (2 max|tanh w|) + 1/2``."""
    levels = 2**bits - 1
    t = torch.tanh(w)
    top = t.abs().max()
    if not bool(top > 0):  # all zero: 0/0 below; see the module docstring
        return w - w.detach()  # zeros forward, gradient 1
    w_t = t / (2 * top) + 0.5
    return 2 * round_ste(w_t * levels) / levels - 1


class DoReFaWeightQuantizer(Quantizer):
    """DoReFa-Net weight quantizer (no learnable parameter), the weights of PACT's experiments."""

    min_bits = 2  # 1-bit DoReFa is a different formula (sign times mean |w|); see binary.py

    def __init__(self, bits: int, output_scale: str = "max_abs"):
        super().__init__(bits)
        if output_scale not in ("max_abs", "normalized"):
            raise QuantParamError(f"output_scale must be 'max_abs' or 'normalized', got {output_scale!r}")
        self.output_scale = output_scale

    def quantize_float(self, w: torch.Tensor) -> torch.Tensor:
        w_q = dorefa_weight(w, self.bits)
        top = w.detach().abs().max()
        if self.output_scale == "max_abs" and bool(top > 0):  # an all-zero w_q is zeros already (keep its gradient)
            w_q = w_q * top
        return w_q

    def extra_repr(self) -> str:
        return f"bits={self.bits}, output_scale={self.output_scale}"


def pact_act_quantizer(bits: int, name: str = "", layer: nn.Module | None = None) -> PACTQuantizer:
    """Factory for ``quantize_model``: a PACT activation quantizer with ``alpha = 10``."""
    return PACTQuantizer(bits)


def pact_weight_quantizer(bits: int, name: str = "", layer: nn.Module | None = None) -> DoReFaWeightQuantizer:
    """Factory for ``quantize_model``: DoReFa weights rescaled to the layer's ``max|w|``."""
    return DoReFaWeightQuantizer(bits)
