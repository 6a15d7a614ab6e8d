"""How far a quantized network's layer outputs drift from the float network's, layer by layer in forward order.

For every conv/linear layer l we compare the output y_l of the quantized copy with the float model's output on
the same images:

    e_l = ||y_l(quantized) - y_l(float)|| / ||y_l(float)||        (Frobenius norms over the whole batch)

e_l near 0: the layer still sees what the float network sees. e_l near 1: the quantized output is about as far
from the float one as the float output is from zero, so little of the float network's signal is left. Errors
compound: each layer works on the already-distorted output of the one before. Skip connections carry a less
distorted copy past the blocks (precision highway, notebook 05), which is why a ResNet drifts more slowly than
a plain stack such as MobileNetV1. Used in the learnable-quantization notebook (06) to show why W2A2 fails,
and by ``mpqlab.highway`` for the error after every residual block (notebook 05).
"""

from __future__ import annotations

import torch
from torch import nn

from mpqlab.errors import PolicyError, check_tensor


def weighted_layers(model: nn.Module) -> list[str]:
    """Names of the conv and linear layers (quantized or not), in the order ``named_modules`` lists them."""
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@torch.no_grad()
def layer_outputs(model: nn.Module, images: torch.Tensor, names: list[str], device: str = "cpu") -> dict:
    """``{name: output}`` of the named layers for ``images``, the model in eval mode (outputs moved to the CPU)."""
    check_tensor(images, name="images")
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise PolicyError(f"the model has no layer named {unknown}; it has {weighted_layers(model)}")
    outputs: dict[str, torch.Tensor] = {}
    hooks = [modules[n].register_forward_hook(lambda m, inp, out, n=n: outputs.__setitem__(n, out.detach().cpu()))
             for n in names]
    try:
        model.eval().to(device)(images.to(device))
    finally:
        for h in hooks:
            h.remove()
    return outputs


def relative_errors(reference: nn.Module, model: nn.Module, images: torch.Tensor, names: list[str],
                    device: str = "cpu") -> dict[str, float]:
    """``{name: e_l}`` for the named modules (present in both models under the same names), in forward order."""
    ref, out = layer_outputs(reference, images, names, device), layer_outputs(model, images, names, device)
    return {n: float((out[n] - ref[n]).norm() / ref[n].norm().clamp(min=1e-12)) for n in ref}


def layer_relative_errors(reference: nn.Module, model: nn.Module, images: torch.Tensor,
                          device: str = "cpu") -> dict[str, float]:
    """``{layer: e_l}`` for every conv/linear layer of ``reference`` (the float model), in forward order."""
    return relative_errors(reference, model, images, weighted_layers(reference), device)
