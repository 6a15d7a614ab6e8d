"""The straight-through estimator (STE): round in the forward pass, pretend it was the identity backward.

Rounding has zero gradient almost everywhere, so a network with rounded weights cannot learn
through it. The STE (Bengio et al. 2013; used by every quantization-aware training method in the
workbook) replaces d round(x)/dx by 1:

    forward:  y = round(x)
    backward: dL/dx = dL/dy

Written as ``x + (round(x) - x).detach()``: the detached term carries the rounding error
forward but no gradient, so autograd sees the identity.
"""

from __future__ import annotations

import torch


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward, identity gradient backward.

    >>> x = torch.tensor([0.2, 1.7], requires_grad=True)
    >>> round_ste(x).sum().backward(); x.grad
    tensor([1., 1.])
    """
    return x + (torch.round(x) - x).detach()


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """``sign(x)`` (with sign(0) = +1) forward, the clipped identity backward: gradient 1 where |x| <= 1, else 0.

    This is the STE of BinaryConnect / XNOR-Net ("hard tanh" gradient).
    """
    hard = torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))
    clipped = x.clamp(-1.0, 1.0)
    return clipped + (hard - clipped).detach()
