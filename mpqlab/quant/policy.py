"""Bit-width policies and ``quantize_model``: put a quantized layer wherever the policy says.

A *policy* is a plain dict ``{layer_name: (w_bits, a_bits)}`` over the model's Conv2d and
Linear layers (names as in ``model.named_modules()``). ``None`` for either bit-width keeps that
side in full precision. Layers the policy does not name stay untouched.

Quantizers are built by *factories*, callables ``factory(bits, name, layer) -> Quantizer``;
pass your own to use another method (log, LSQ, PACT, ...) without editing any layer class.
"""

from __future__ import annotations

import copy
from typing import Callable

from torch import nn

from mpqlab.errors import PolicyError, check_bits
from mpqlab.quant.layers import QuantConv2d, QuantLinear
from mpqlab.quant.quantizer import FullPrecision, Quantizer

QuantizerFactory = Callable[[int, str, nn.Module], Quantizer]
Policy = dict[str, tuple[int | None, int | None]]


def quantizable_layers(model: nn.Module) -> list[str]:
    """Names of the model's Conv2d and Linear layers (quantized ones included), in forward-definition order."""
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def uniform_policy(model: nn.Module, w_bits: int | None, a_bits: int | None,
                   first_last_bits: int | None = None) -> Policy:
    """The same ``(w_bits, a_bits)`` for every conv/linear layer.

    ``first_last_bits`` holds the first and last layers at that bit-width for both weights and
    activations (LIMPQ and most papers keep them at 8 bits); ``None`` treats them like the rest.
    """
    names = quantizable_layers(model)
    policy = {name: (w_bits, a_bits) for name in names}
    if first_last_bits is not None and names:
        policy[names[0]] = (first_last_bits, first_last_bits)
        policy[names[-1]] = (first_last_bits, first_last_bits)
    return policy


def validate_policy(model: nn.Module, policy: Policy) -> Policy:
    """Check layer names and bit-widths; return the policy with bit-widths as ints (or None)."""
    if not isinstance(policy, dict):
        raise PolicyError(f"a policy must be a dict {{layer_name: (w_bits, a_bits)}}, got {type(policy).__name__}")
    known = quantizable_layers(model)
    unknown = [name for name in policy if name not in known]
    if unknown:
        shown = ", ".join(known[:6]) + (", ..." if len(known) > 6 else "")
        raise PolicyError(f"unknown layer name(s) in policy: {unknown}; the model's conv/linear layers are: {shown}")
    clean: Policy = {}
    for name, bits in policy.items():
        if not (isinstance(bits, (tuple, list)) and len(bits) == 2):
            raise PolicyError(f"policy[{name!r}] must be a pair (w_bits, a_bits), got {bits!r}")
        w_bits, a_bits = bits
        clean[name] = (
            None if w_bits is None else check_bits(w_bits, name=f"w_bits of {name!r}"),
            None if a_bits is None else check_bits(a_bits, name=f"a_bits of {name!r}"),
        )
    return clean


def quantize_model(model: nn.Module, policy: Policy, *,
                   weight_quantizer: QuantizerFactory | None = None,
                   act_quantizer: QuantizerFactory | None = None,
                   inplace: bool = False) -> nn.Module:
    """Return a copy of ``model`` (or ``model`` itself if ``inplace``) with the policy's layers quantized.

    The default factories are the uniform quantizers of notebook 01: symmetric per-channel weights and
    asymmetric per-tensor activations with a running min-max observer.
    """
    policy = validate_policy(model, policy)
    if weight_quantizer is None or act_quantizer is None:
        from mpqlab.quant.uniform import default_act_quantizer, default_weight_quantizer

        weight_quantizer = weight_quantizer or default_weight_quantizer
        act_quantizer = act_quantizer or default_act_quantizer
    if not inplace:
        model = copy.deepcopy(model)
    modules = dict(model.named_modules())
    for name, (w_bits, a_bits) in policy.items():
        layer = modules[name]
        w_q = None if w_bits is None else weight_quantizer(w_bits, name, layer)
        a_q = None if a_bits is None else act_quantizer(a_bits, name, layer)
        if isinstance(layer, (QuantConv2d, QuantLinear)):
            layer.w_quantizer = w_q if w_q is not None else FullPrecision()
            layer.a_quantizer = a_q if a_q is not None else FullPrecision()
            continue
        wrapper = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
        _set_submodule(model, name, wrapper.from_float(layer, w_q, a_q))
    return model


def model_policy(model: nn.Module) -> Policy:
    """Read the policy back from a quantized model: ``{name: (w_bits, a_bits)}``, None for full precision."""
    policy: Policy = {}
    for name, m in model.named_modules():
        if isinstance(m, (QuantConv2d, QuantLinear)):
            w = m.w_quantizer.bits if m.w_quantizer.bits != 32 else None
            a = m.a_quantizer.bits if m.a_quantizer.bits != 32 else None
            policy[name] = (w, a)
    return policy


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
