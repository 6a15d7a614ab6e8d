"""Precision highway: low-precision residual branches, a high-precision skip path (notebook 05).

E. Park, D. Kim, S. Yoo, "Precision Highway for Ultra Low-Precision Quantization", 2018.

A residual block computes y = ReLU(F(x) + x). The branch F (conv-BN-ReLU-conv-BN) holds all the
multiplications, and training makes F(x) small next to x, so the large values travel along the skip.
Quantizing x to a few bits on the skip injects an error into every block's output, and the errors pile
up with depth (the accumulated quantization error). The highway keeps the skip in high precision:

    y = ReLU( F(Q_b(x)) + shortcut(Q_s(x)) )

    Q_b   the branch's input quantizer (the first conv's a_quantizer, b bits)
    Q_s   the skip quantizer, this module's addition:
            b bits        -> everything quantized (Q_s = Q_b: the block input is stored once, at b bits)
            8 bits        -> an 8-bit highway
            None (float)  -> a full-precision highway

Our ResNet-20 has option-A shortcuts (identity, subsampled and zero-padded where the shape changes), so
there is no conv on the skip whose weights could be quantized: "quantizing the skip" means quantizing the
activation that flows along it, i.e. the block input x (the output of the previous addition). ``Q_s``
sits in front of the shortcut, so the same block input reaches the branch through ``Q_b`` and the skip
through ``Q_s``; the addition and the ReLU after it run in float (an accumulator's precision).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mpqlab import layer_error
from mpqlab.errors import PolicyError, check_bits, check_tensor
from mpqlab.models.resnet import BasicBlock
from mpqlab.quant.policy import QuantizerFactory, quantize_model, uniform_policy
from mpqlab.quant.observers import MSEObserver
from mpqlab.quant.quantizer import FullPrecision, Quantizer
from mpqlab.quant.uniform import UniformQuantizer


class HighwayBlock(BasicBlock):
    """A ``BasicBlock`` whose skip path passes through ``skip_quantizer``: y = ReLU(F(x) + shortcut(Q_s(x)))."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, skip_quantizer: Quantizer | None = None):
        super().__init__(in_channels, out_channels, stride)
        self.skip_quantizer = skip_quantizer if skip_quantizer is not None else FullPrecision()

    @classmethod
    def from_block(cls, block: BasicBlock, skip_quantizer: Quantizer | None = None) -> "HighwayBlock":
        """Wrap an existing block; the new one shares its convs and batch norms (names stay the same)."""
        new = cls(block.conv1.in_channels, block.conv1.out_channels, block.stride, skip_quantizer)
        new.conv1, new.bn1, new.conv2, new.bn2 = block.conv1, block.bn1, block.conv2, block.bn2
        return new.to(block.conv1.weight.device)

    def forward(self, x):
        return F.relu(self.residual(x) + self.shortcut(self.skip_quantizer(x)))


def mse_act_quantizer(bits: int, name: str = "", layer: nn.Module | None = None) -> UniformQuantizer:
    """Static, unsigned, per-tensor activations whose clipping range minimises the MSE (notebook 02's
    ``MSEObserver``), searched over 25 candidate ranges (4% apart) on a sample of 8192 values per batch.

    At 2-3 bits a min-max range wastes the few levels on rare large values. The search is coarser than
    ``mpqlab.quant.ptq``'s (100 candidates), which keeps calibrating ResNet-20's 28 quantizers to seconds.
    """
    return UniformQuantizer(MSEObserver(bits, num_candidates=25, max_samples=8192), mode="static")


def residual_blocks(model: nn.Module) -> list[tuple[str, BasicBlock]]:
    """(name, block) for every basic block of a ResNet, in forward order; PolicyError if there are none."""
    blocks = [(name, m) for name, m in model.named_modules() if isinstance(m, BasicBlock)]
    if not blocks:
        raise PolicyError(f"a precision highway needs a ResNet with residual blocks; "
                          f"{type(model).__name__} has none (use mpqlab.models.resnet20)")
    return blocks


def highway_resnet(model: nn.Module, bits: int, skip_bits: int | None, first_last_bits: int | None = 8,
                   act_quantizer: QuantizerFactory | None = None) -> nn.Module:
    """A quantized copy of a ResNet: every branch conv at W``bits``A``bits``, skips at ``skip_bits``.

    ``skip_bits``: ``bits`` for everything quantized, 8 for an 8-bit highway, None for a float one.
    The stem conv and the classifier keep ``first_last_bits``. ``act_quantizer`` builds both the conv
    input quantizers and the skip quantizers (default ``mse_act_quantizer``); weights use the default
    per-channel symmetric min-max quantizer. Calibrate the copy before use (``mpqlab.quant.ptq.calibrate``):
    static quantizers measure their ranges then.
    """
    bits = check_bits(bits)
    skip_bits = None if skip_bits is None else check_bits(skip_bits, name="skip_bits")
    blocks = residual_blocks(model)
    act_quantizer = act_quantizer or mse_act_quantizer
    qmodel = quantize_model(model, uniform_policy(model, bits, bits, first_last_bits), act_quantizer=act_quantizer)
    for name, _ in blocks:
        parent_name, _, child = name.rpartition(".")
        parent, block = qmodel.get_submodule(parent_name), qmodel.get_submodule(name)
        skip_q = None if skip_bits is None else act_quantizer(skip_bits, f"{name}.skip", block)
        setattr(parent, child, HighwayBlock.from_block(block, skip_q))
    return qmodel


def block_outputs(model: nn.Module, images: torch.Tensor, device: str = "cpu") -> list[torch.Tensor]:
    """The output y_l of every residual block for ``images``, in forward order (model in eval mode)."""
    return list(layer_error.layer_outputs(model, images, [name for name, _ in residual_blocks(model)], device).values())


def relative_errors(reference: nn.Module, model: nn.Module, images: torch.Tensor,
                    device: str = "cpu") -> list[float]:
    """Accumulated quantization error after every block: e_l = ||y_l(model) - y_l(ref)|| / ||y_l(ref)||.

    Norms are Frobenius norms over the whole batch. ``reference`` is the float model.
    """
    names = [name for name, _ in residual_blocks(reference)]
    return list(layer_error.relative_errors(reference, model, images, names, device).values())


@torch.no_grad()
def branch_and_skip(model: nn.Module, images: torch.Tensor, device: str = "cpu") -> list[dict]:
    """For every block of a float ResNet: the size of F(x) against the size of the skip's x.

    Returns one dict per block with ``rms_branch`` = sqrt(mean F(x)^2), ``rms_skip`` (the same for
    shortcut(x)), and their maxima ``max_branch`` = max|F(x)|, ``max_skip`` = max shortcut(x).
    """
    check_tensor(images, name="images")
    inputs: list[torch.Tensor] = []
    blocks = [blk for _, blk in residual_blocks(model)]
    hooks = [blk.register_forward_pre_hook(lambda m, inp: inputs.append(inp[0])) for blk in blocks]
    try:
        model.eval().to(device)(images.to(device))
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for blk, x in zip(blocks, inputs):
        branch, skip = blk.residual(x), blk.shortcut(x)  # both (N, C_out, H_out, W_out)
        rows.append({"rms_branch": float(branch.pow(2).mean().sqrt()), "rms_skip": float(skip.pow(2).mean().sqrt()),
                     "max_branch": float(branch.abs().max()), "max_skip": float(skip.abs().max())})
    return rows
