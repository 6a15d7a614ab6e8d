"""Outlier-aware quantization: keep the few largest values in full precision, quantize the rest finely.

E. Park, S. Yoo, P. Vajda, "Value-aware Quantization for Training and Inference of Neural
Networks", ECCV 2018; E. Park, D. Kim, S. Yoo, "Energy-efficient Neural Network Accelerator Based
on Outlier-aware Low-precision Computation" (OLAccel), ISCA 2018.

A handful of large values would set the range of a linear grid and leave most codes unused.
Keep the top ``ratio`` of them as they are and quantize the rest with a step fitted to them:

    t = the (1 - ratio) quantile of |x| over the non-zero x
        (an order statistic: the largest of the n - floor(ratio n) smallest of the n non-zero |x|)
    outliers: |x| > t, kept in full precision
    the rest: x_hat = clamp(round(x / scale), q_min, q_max) * scale,   scale = t / q_max
    signed (weights):        q_min = -(2^(b-1) - 1), q_max = 2^(b-1) - 1   (symmetric, b >= 2)
    unsigned (activations):  q_min = 0, q_max = 2^b - 1, negative x -> 0

t itself is the top level, so values equal to t are represented exactly and only |x| > t count
as outliers: floor(ratio n) of them when there are no ties. ``ratio = 0`` gives t = max|x|, no
outliers: plain linear quantization clipped at max|x|. Activation thresholds follow an
exponential moving average over batches (our choice for a running estimate).

Quantized back-propagation (value-aware training, ECCV 2018, saves training memory this way):
the activations autograd keeps for the backward pass are stored as b-bit codes plus the outliers
in full precision (``compress_for_backward``, ``CompressedSavedActivations``). Zeros stay zero and
positive values stay positive (the smallest ones round up to the first level), so a ReLU's derivative
[a > 0] is exactly the float one: only dL/dW = delta * a^T sees the rounding.

Introduced in notebook 04 (outlier-aware quantization).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mpqlab.errors import BitWidthError, QuantParamError, TensorValueError, check_bits, check_fraction, check_tensor
from mpqlab.quant.quantizer import Quantizer


def q_max_for(bits: int, signed: bool) -> int:
    """q_max = 2^(b-1) - 1 for signed (symmetric) codes, 2^b - 1 for unsigned ones."""
    bits = check_bits(bits, low=2 if signed else 1)
    return 2 ** (bits - 1) - 1 if signed else 2**bits - 1


def outlier_threshold(x: torch.Tensor, ratio: float, signed: bool = True) -> float:
    """t: the (1 - ratio) quantile of the non-zero |x| (of the positive x if unsigned); 0 if there are none."""
    ratio = check_fraction(ratio, name="ratio")
    mag = check_tensor(x).detach().flatten()
    mag = mag.abs() if signed else mag.clamp(min=0)
    mag = mag[mag > 0]
    if mag.numel() == 0:
        return 0.0
    keep = mag.numel() - math.floor(ratio * mag.numel())  # rank of t among the sorted magnitudes
    return float(torch.kthvalue(mag, keep).values)


@dataclass
class OutlierResult:
    x_hat: torch.Tensor  # quantized inliers, untouched outliers (straight-through gradient)
    outliers: torch.Tensor  # bool mask, |x| > threshold
    threshold: float  # t
    scale: float  # t / q_max

    @property
    def n_outliers(self) -> int:
        return int(self.outliers.sum())


def outlier_quantize(x: torch.Tensor, bits: int, threshold: float, signed: bool = True) -> OutlierResult:
    """Quantize the values with |x| <= threshold on the grid scale * [q_min, q_max]; keep the others."""
    q_max = q_max_for(bits, signed)
    check_tensor(x)
    if not math.isfinite(threshold) or threshold < 0:
        raise QuantParamError(f"threshold must be a finite number >= 0, got {threshold!r}")
    xd = x.detach()
    outliers = (xd.abs() if signed else xd) > threshold
    scale = threshold / q_max
    codes = torch.clamp(torch.round(xd / (scale or 1.0)), -q_max if signed else 0, q_max)  # scale 0: x is 0 here
    x_hat = torch.where(outliers, xd, codes * scale)
    return OutlierResult(x_hat + (x - xd), outliers, threshold, scale)  # straight-through, exact forward


class OutlierQuantizer(Quantizer):
    """Outlier-aware fake quantizer. The threshold comes from the tensor itself on every call when
    ``momentum`` is None (weights), else from t <- (1 - momentum) t + momentum t_batch, updated in
    training mode (eval mode only initialises it). ``n_outliers``/``numel`` describe the last call.
    ``signed=None`` decides from the first batch (signed if it holds negative values).
    """

    def __init__(self, bits: int, ratio: float = 0.02, signed: bool | None = True, momentum: float | None = None):
        super().__init__(bits)
        self.ratio = check_fraction(ratio, name="ratio")
        self.momentum = None if momentum is None else check_fraction(momentum, name="momentum", high_inclusive=True)
        self.signed = signed
        if signed:
            q_max_for(bits, signed)
        self.register_buffer("running_threshold", torch.tensor(0.0))
        self.register_buffer("num_batches", torch.tensor(0))
        self.n_outliers, self.numel = 0, 0

    def quantize_float(self, x: torch.Tensor) -> torch.Tensor:
        if self.signed is None:
            self.signed = bool((x.detach() < 0).any())
        if self.signed and self.bits < 2:
            raise BitWidthError(f"signed outlier-aware quantization needs bits >= 2, got {self.bits}")
        if self.momentum is None:
            t = outlier_threshold(x, self.ratio, self.signed)
        else:
            if self.training or int(self.num_batches) == 0:  # eval mode skips the (costly) batch quantile
                t = outlier_threshold(x, self.ratio, self.signed)
                first = int(self.num_batches) == 0
                old = float(self.running_threshold)
                self.running_threshold.fill_(t if first else (1 - self.momentum) * old + self.momentum * t)
                self.num_batches += 1
            t = float(self.running_threshold)
        result = outlier_quantize(x, self.bits, t, self.signed)
        self.n_outliers, self.numel = result.n_outliers, x.numel()
        return result.x_hat

    def extra_repr(self) -> str:
        return f"bits={self.bits}, ratio={self.ratio}, signed={self.signed}, momentum={self.momentum}"


def outlier_weight_quantizer(bits: int, name: str = "", layer=None) -> OutlierQuantizer:
    """Factory for ``quantize_model``: signed weights, 2% outliers."""
    return OutlierQuantizer(bits, ratio=0.02, signed=True)


def outlier_act_quantizer(bits: int, name: str = "", layer=None) -> OutlierQuantizer:
    """Factory for ``quantize_model``: activations, 2% outliers, threshold EMA with momentum 0.1."""
    return OutlierQuantizer(bits, ratio=0.02, signed=None, momentum=0.1)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack b-bit codes (uint8, < 2^b) into ceil(n b / 8) bytes, least significant bit first."""
    shifts = torch.arange(8, dtype=torch.uint8, device=codes.device)
    planes = (codes.flatten()[:, None] >> shifts[:bits]) & 1  # (n, b) one bit per byte, for now
    flat = torch.cat([planes.flatten(), planes.new_zeros(-planes.numel() % 8)])
    return (flat.view(-1, 8) << shifts).sum(1, dtype=torch.uint8)  # (ceil(n b / 8),)


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """The inverse of ``pack_bits``: n codes as uint8."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    planes = (packed[:, None] >> shifts) & 1  # (bytes, 8)
    return (planes.flatten()[: n * bits].view(n, bits) << shifts[:bits]).sum(1, dtype=torch.uint8)  # (n,)


@dataclass
class CompressedTensor:
    packed: torch.Tensor  # uint8: bit-packed b-bit codes of every element (outliers' codes unused)
    outlier_index: torch.Tensor  # int32 flat positions of the outliers
    outlier_value: torch.Tensor  # their values, in the original dtype
    scale: torch.Tensor  # 0-d float32
    shape: torch.Size
    bits: int

    @property
    def nbytes(self) -> int:
        """Bytes actually held by the tensors above."""
        held = (self.packed, self.outlier_index, self.outlier_value, self.scale)
        return sum(t.numel() * t.element_size() for t in held)


def compress_for_backward(x: torch.Tensor, bits: int = 3, ratio: float = 0.02) -> CompressedTensor:
    """Store a non-negative (post-ReLU) tensor as unsigned b-bit codes plus full-precision outliers."""
    bits = check_bits(bits, high=8)
    x = check_tensor(x).detach()
    if bool((x < 0).any()):
        raise TensorValueError(f"compress_for_backward stores non-negative (post-ReLU) tensors; "
                               f"min is {float(x.min())!r}")
    r = outlier_quantize(x, bits, outlier_threshold(x, ratio, signed=False), signed=False)
    codes = torch.round(r.x_hat / (r.scale or 1.0)).clamp(0, 2**bits - 1).to(torch.uint8)  # outliers clamp, unused
    # A positive value below scale/2 gets code 1, not 0: the ReLU's backward mask [a > 0] must survive, or
    # the gradient of every such unit is switched off (a fifth of the positives at 3 bits, notebook 04).
    codes = torch.where((x > 0) & (codes == 0), torch.ones_like(codes), codes)
    index = torch.nonzero(r.outliers.flatten()).flatten()
    index = index.to(torch.int32 if x.numel() < 2**31 else torch.int64)
    return CompressedTensor(pack_bits(codes, bits), index, x.flatten()[index.long()].clone(),
                            torch.tensor(r.scale, dtype=torch.float32), x.shape, bits)


def decompress(c: CompressedTensor) -> torch.Tensor:
    """codes * scale, with the outliers put back."""
    n = math.prod(c.shape)
    x = unpack_bits(c.packed, c.bits, n).to(c.outlier_value.dtype) * c.scale.to(c.outlier_value.dtype)
    x[c.outlier_index.long()] = c.outlier_value
    return x.view(c.shape)


class CompressedSavedActivations:
    """Context manager: tensors autograd saves for backward that are non-negative (post-ReLU), floating
    and at least ``min_numel`` long are held compressed; others (parameters, signed tensors) untouched.

    ``full_bytes``/``held_bytes`` add up, over the compressed tensors, their float size and the bytes
    actually held. A tensor saved twice (a ReLU output and the next conv's input) counts twice.

        with CompressedSavedActivations(bits=3, ratio=0.02) as saved:
            model(x).sum().backward()
        print(saved.held_bytes / saved.full_bytes)
    """

    def __init__(self, bits: int = 3, ratio: float = 0.02, min_numel: int = 1024):
        self.bits, self.ratio = check_bits(bits, high=8), check_fraction(ratio, name="ratio")
        self.min_numel = min_numel
        self.full_bytes = self.held_bytes = self.n_compressed = self.n_skipped = 0

    def _pack(self, t: torch.Tensor):
        is_weight = isinstance(t, nn.Parameter) or isinstance(t._base, nn.Parameter)  # e.g. linear's W.t()
        if is_weight or not t.is_floating_point() or t.numel() < self.min_numel or bool((t < 0).any()):
            self.n_skipped += 1
            return t
        c = compress_for_backward(t, self.bits, self.ratio)
        self.full_bytes += t.numel() * t.element_size()
        self.held_bytes += c.nbytes
        self.n_compressed += 1
        return c

    @staticmethod
    def _unpack(p):
        return decompress(p) if isinstance(p, CompressedTensor) else p

    def __enter__(self) -> "CompressedSavedActivations":
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
