"""From a fine-tuned LSQ model to integer layers: weight codes, step sizes and BatchNorm folded per channel.

An LSQ model (``mpqlab.limpq.joint.lsq_policy_model``) computes, for each conv -> BN -> ReLU block,

    y = ReLU(gamma (conv(s_x q_x, s_w q_w) - mu) / sigma + beta),   sigma = sqrt(var + eps)

with per-tensor steps ``s_x`` (input, LSQ) and ``s_w`` (weights, LSQ) and ``q_w = round(clip(W / s_w))``.
The usual folding (Jacob et al. 2018, Sec. 3.2) multiplies gamma / sigma into W before quantizing it. Here
that would be dishonest: the model was trained with W quantized *before* BN, and folding per-channel
factors into W then re-quantizing it per tensor changes the codes. So the codes stay exactly as trained,
and BN becomes a per-output-channel affine map on the accumulator's real value:

    y_c = a_c * (s_x s_w acc_c) + b_c,   a_c = gamma_c / sigma_c,   b_c = beta_c - mu_c a_c

``a`` and ``b`` are what the packed file stores; ``mpqlab.deploy.integer_model`` turns them into a
fixed-point multiplier and an int32 bias. The classifier has no BN: ``a = 1`` and ``b`` is its bias.

Only chains of conv -> BN -> ReLU blocks ending in average pooling and one linear layer are packed
(MobileNetV1, depthwise convs included); a residual add (ResNet-20) needs one more integer operation
that is not written yet, and ``fold_model`` says so. Introduced in notebook 11.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from mpqlab.errors import CheckpointError, PolicyError
from mpqlab.models import MobileNetV1, build_model
from mpqlab.quant.layers import QuantConv2d, QuantLinear
from mpqlab.quant.lsq import LSQQuantizer, lsq_range

STEP_KEY = re.compile(r"^(?P<layer>.+)\.(?P<role>w|a)_quantizer\.steps\.(?P<bits>\d+)$")


@dataclass
class FoldedLayer:
    """One layer, ready to pack: integer weight codes and the real numbers around them."""

    name: str  # e.g. "dw3.conv"
    kind: str  # "conv" or "linear"
    codes: torch.Tensor  # int64 weight codes q_w, the weight's shape, in [q_min, q_max] of w_bits
    w_bits: int
    w_scale: float  # s_w, LSQ's weight step
    a_bits: int  # bit-width of this layer's input codes
    a_signed: bool  # the first layer's input (a normalised image) is signed, the rest follow a ReLU
    a_scale: float  # s_x, LSQ's step of this layer's input
    channel_scale: torch.Tensor  # (C_out,) a_c = gamma / sigma (1 for the classifier)
    channel_shift: torch.Tensor  # (C_out,) b_c = beta - mu a_c (the classifier's bias)
    stride: int = 1
    padding: int = 0
    groups: int = 1


def weight_codes(weight: torch.Tensor, step: torch.Tensor, bits: int) -> torch.Tensor:
    """``q_w = round(clip(W / s_w, q_min, q_max))`` computed exactly as the LSQ forward pass does (float32)."""
    q_min, q_max = lsq_range(bits, signed=True)
    return torch.round(torch.div(weight.detach(), step.detach()).clamp(q_min, q_max)).long()


def policy_from_state(state: dict) -> dict[str, tuple[int, int]]:
    """Read ``{layer: (w_bits, a_bits)}`` from an LSQ state dict's step keys (``...w_quantizer.steps.4``)."""
    found: dict[str, dict[str, list[int]]] = {}
    for key in state:
        match = STEP_KEY.match(key)
        if match:
            found.setdefault(match["layer"], {}).setdefault(match["role"], []).append(int(match["bits"]))
    if not found:
        raise CheckpointError("the checkpoint holds no LSQ step sizes (keys '<layer>.w_quantizer.steps.<bits>'); "
                              "export needs a model fine-tuned with LSQ quantizers")
    policy = {}
    for layer, roles in found.items():
        if sorted(roles) != ["a", "w"] or len(roles["w"]) != 1 or len(roles["a"]) != 1:
            raise CheckpointError(f"layer {layer!r} must hold exactly one weight step and one activation step, "
                                  f"found {roles}; a LIMPQ joint model (several steps) must be fine-tuned at one "
                                  "policy first (lsq_policy_model)")
        policy[layer] = (roles["w"][0], roles["a"][0])
    return policy


def lsq_model_from_state(model_name: str, state: dict, source: str = "checkpoint") -> nn.Module:
    """Rebuild the LSQ model a state dict came from: architecture ``model_name``, policy read from the keys."""
    from mpqlab.checkpoint import load_into
    from mpqlab.limpq.joint import lsq_policy_model

    try:  # a workbook name (mobilenet_v1_small) or a --model spec as `indicators`/`finetune` take it
        if ":" in model_name:
            from mpqlab.model_zoo import build_from_spec

            fp_model = build_from_spec(model_name)
        else:
            fp_model = build_model(model_name)
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    policy = policy_from_state(state)
    try:
        qmodel = lsq_policy_model(fp_model, policy)
    except PolicyError as err:
        raise CheckpointError(f"{source} does not fit {model_name}: {err}") from None
    return load_into(qmodel, state, source=source).eval()


def chain(qmodel: nn.Module) -> list[tuple[nn.Module, nn.Module | None]]:
    """``[(quantized conv, its BN), ..., (classifier, None)]`` in execution order, or CheckpointError."""
    if not isinstance(qmodel, MobileNetV1):
        raise CheckpointError(f"packing supports MobileNetV1 (conv -> BN -> ReLU chains), got {type(qmodel).__name__}; "
                              "residual adds (ResNet-20) and h-swish (MobileNetV3) have no integer kernel here yet")
    blocks = [qmodel.conv1] + [getattr(qmodel, name) for name in qmodel.pair_names]
    return [(block.conv, block.bn) for block in blocks] + [(qmodel.fc, None)]


def check_lsq_layer(name: str, layer: nn.Module) -> None:
    """PolicyError unless ``layer`` is a quantized layer with LSQ weights and activations at 2-8 bits."""
    if not isinstance(layer, (QuantConv2d, QuantLinear)):
        raise PolicyError(f"layer {name!r} is not quantized; every layer needs (w_bits, a_bits) to be packed")
    for role in ("w_quantizer", "a_quantizer"):
        q = getattr(layer, role)
        if not isinstance(q, LSQQuantizer):
            raise PolicyError(f"{name}.{role} is {type(q).__name__}; packing reads LSQ step sizes only")
        if not 2 <= q.bits <= 8:
            raise PolicyError(f"{name}.{role} has {q.bits} bits; packing supports 2 to 8 bits")
    if layer.a_quantizer.signed and layer.a_quantizer.bits != 8:
        raise PolicyError(f"{name}: a signed input is supported at 8 bits only (the first layer), got "
                          f"{layer.a_quantizer.bits}")


@torch.no_grad()
def fold_model(qmodel: nn.Module) -> list[FoldedLayer]:
    """Every layer of an LSQ MobileNetV1 as a ``FoldedLayer`` (integer codes, steps, BN folded per channel)."""
    names = {module: name for name, module in qmodel.named_modules()}
    folded = []
    for layer, bn in chain(qmodel):
        name = names[layer]
        check_lsq_layer(name, layer)
        w_q, a_q = layer.w_quantizer, layer.a_quantizer
        if bn is not None:
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C,) a_c = gamma / sigma
            shift = bn.bias - bn.running_mean * scale                 # (C,) b_c = beta - mu a_c
        else:
            scale = torch.ones(layer.out_features)
            shift = layer.bias.detach().clone() if layer.bias is not None else torch.zeros(layer.out_features)
        conv = isinstance(layer, nn.Conv2d)
        if conv and (layer.padding_mode != "zeros" or isinstance(layer.padding, str) or layer.bias is not None
                     or len(set(layer.stride)) != 1 or len(set(layer.padding)) != 1 or layer.dilation != (1, 1)):
            raise CheckpointError(f"{name}: packing supports square stride/padding, zero padding, no dilation and "
                                  "no conv bias (BN follows)")
        folded.append(FoldedLayer(
            name=name, kind="conv" if conv else "linear", codes=weight_codes(layer.weight, w_q.step, w_q.bits),
            w_bits=w_q.bits, w_scale=float(w_q.step), a_bits=a_q.bits, a_signed=bool(a_q.signed),
            a_scale=float(a_q.step), channel_scale=scale.float().clone(), channel_shift=shift.float().clone(),
            stride=layer.stride[0] if conv else 1, padding=layer.padding[0] if conv else 0,
            groups=layer.groups if conv else 1))
    return folded
