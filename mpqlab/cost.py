"""The cost model: multiply-accumulates (MACs), parameters, BitOps and model size, per layer.

For every Conv2d and Linear layer, one forward pass at a given input size records

    MACs   = H_out * W_out * C_out * (C_in / groups) * k_h * k_w      (conv)
    MACs   = in_features * out_features                               (linear)
    params = number of weights (biases are left out, as LIMPQ counts them)

and from a bit-width policy ``{name: (w_bits, a_bits)}`` (the MPQ papers' cost measures)

    BitOps = sum_l MACs_l * w_bits_l * a_bits_l
    size   = sum_l params_l * w_bits_l   bits

Layers a policy does not name count at full precision (32 bits). ``first_last_bits`` holds the
first and last layers at a fixed bit-width, as LIMPQ does (8 bits). Quantized layers are
Conv2d/Linear subclasses, so the same table serves float and quantized models.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from mpqlab.errors import GraphError

FULL_PRECISION = 32


def layer_kind(module: nn.Module) -> str:
    """'depthwise', 'pointwise', 'conv' or 'linear'."""
    if isinstance(module, nn.Linear):
        return "linear"
    if module.groups > 1 and module.groups == module.in_channels:
        return "depthwise"
    if module.kernel_size == (1, 1) and module.groups == 1:
        return "pointwise"
    return "conv"


@torch.no_grad()
def layer_table(model: nn.Module, input_size=(1, 3, 224, 224), device: str = "cpu") -> pd.DataFrame:
    """Per-layer MACs (for one input) and parameter counts from one forward pass of zeros.

    Returns a DataFrame indexed by layer name, in execution order, with columns
    ``kind, in_channels, out_channels, kernel, stride, groups, out_hw, macs, params``.
    """
    rows, hooks = [], []

    def record(name):
        def hook(module, inputs, output):
            if isinstance(module, nn.Linear):
                positions = output[0].numel() // module.out_features  # 1 unless extra dims
                macs = module.in_features * module.out_features * positions
                row = dict(in_channels=module.in_features, out_channels=module.out_features, kernel="",
                           stride="", groups=1, out_hw="")
            else:
                h_out, w_out = output.shape[-2:]
                k_h, k_w = module.kernel_size
                macs = h_out * w_out * module.out_channels * (module.in_channels // module.groups) * k_h * k_w
                row = dict(in_channels=module.in_channels, out_channels=module.out_channels,
                           kernel=f"{k_h}x{k_w}", stride=module.stride[0], groups=module.groups,
                           out_hw=f"{h_out}x{w_out}")
            rows.append(dict(name=name, kind=layer_kind(module), **row, macs=int(macs),
                             params=int(module.weight.numel())))
        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(record(name)))
    was_training = model.training
    try:
        model.eval()
        model(torch.zeros(*input_size, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if not rows:
        raise GraphError(f"{type(model).__name__} has no Conv2d or Linear layer to count")
    return pd.DataFrame(rows).set_index("name")


def policy_bits(table: pd.DataFrame, policy, first_last_bits: int | None = None) -> pd.DataFrame:
    """Per-layer ``w_bits`` and ``a_bits`` columns for ``policy``.

    ``policy`` is a dict ``{name: (w_bits, a_bits)}`` (``None`` or a missing layer means 32 bits) or a
    single pair ``(w_bits, a_bits)`` for every layer.
    """
    if isinstance(policy, tuple):
        policy = {name: policy for name in table.index}
    unknown = [name for name in policy if name not in table.index]
    if unknown:
        from mpqlab.errors import PolicyError
        raise PolicyError(f"unknown layer name(s) in policy: {unknown}; known layers: {list(table.index)[:6]} ...")
    w = [policy.get(name, (None, None))[0] or FULL_PRECISION for name in table.index]
    a = [policy.get(name, (None, None))[1] or FULL_PRECISION for name in table.index]
    out = table.assign(w_bits=w, a_bits=a)
    if first_last_bits is not None:
        for name in (table.index[0], table.index[-1]):
            out.loc[name, ["w_bits", "a_bits"]] = first_last_bits
    return out


def bitops(table: pd.DataFrame, policy, first_last_bits: int | None = None) -> int:
    """``sum_l MACs_l * w_bits_l * a_bits_l`` for ``policy``."""
    t = policy_bits(table, policy, first_last_bits)
    return int((t.macs * t.w_bits * t.a_bits).sum())


def model_size_bits(table: pd.DataFrame, policy, first_last_bits: int | None = None) -> int:
    """``sum_l params_l * w_bits_l``: the weights' storage in bits."""
    t = policy_bits(table, policy, first_last_bits)
    return int((t.params * t.w_bits).sum())


def policy_summary(table: pd.DataFrame, policy, first_last_bits: int | None = None) -> dict:
    """BitOps (and in G), size in bits and MB, compression ratio against 32-bit weights."""
    ops = bitops(table, policy, first_last_bits)
    size = model_size_bits(table, policy, first_last_bits)
    return {
        "bitops": ops, "gbitops": ops / 1e9, "size_bits": size, "size_mb": size / 8 / 1e6,
        "compression_ratio": FULL_PRECISION * int(table.params.sum()) / size,
    }
