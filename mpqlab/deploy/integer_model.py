"""Integer-only execution of a packed model: int codes in, int32 accumulators, fixed-point requantization out.

Between two layers only integers travel. For a layer with input step ``s_x``, weight step ``s_w``, folded
BN ``(a_c, b_c)`` (``mpqlab.deploy.fold``) and the next layer's input step ``s_y`` (Jacob et al. 2018, Sec. 2,
as in notebook 01 and ``mpqlab.quant.integer``, here with per-layer bit-widths and BN kept per channel):

    acc_c = 2^f sum_k q_w[c, k] q_x[k] + q_b[c]               q_b = round(2^f b_c / (a_c s_x s_w))   (int32)
    q_y   = clamp(round(M_c acc_c), 0, 2^a_bits' - 1)          M_c = a_c s_x s_w / (2^f s_y)

where ``a_bits'`` is the next layer's activation bit-width; clamping at 0 is the ReLU. ``M_c`` becomes an
int32 ``m0`` and a shift (``mpqlab.quant.integer.quantize_multiplier``), and ``M_c acc_c`` is rounded
*once*: ``round(acc m0 / 2^(31 + shift))``, an int64 product and one rounding shift (notebook 01's
exercise). gemmlowp (``mpqlab.quant.integer.requantize``) rounds twice, the high 32 bits of the product
and then the shift, so a value within ``2^-shift`` of a half step can land on the wrong side. Background
pixels give the same accumulator at many positions of every image, so one such value repeats: in our
LIMPQ model three layers' channels sat 2e-7 below a half step and the double rounding flipped 3e-5 of
their codes, which the low-bit layers after them amplified to 0.1% of predictions (measured). A negative ``a_c`` (gamma < 0) multiplies ``acc_c`` by -1 first, an
integer negation, so that the fixed-point multiplier stays positive. All zero points are 0 (LSQ grids).

Why ``f`` fractional bits in the accumulator. Jacob et al. store the bias at the accumulator's scale
(``f = 0``). With BN kept per channel, one accumulator step can be worth a tenth of an output step
(``M_c`` = 0.135 in the first layer of a W8A8 model we tried), so a bias rounded to whole accumulator
steps moved outputs by up to 0.07 steps and flipped 8% of that layer's output codes (measured). Shifting the
sum left by ``f`` bits (an integer shift, before the bias is added) makes the bias 2^f times finer; each
layer takes the largest ``f <= 16`` that keeps every accumulator inside int32 by the bound below.

Exactness of the accumulation. torch has no int64 convolution on the CPU, so the sums run as ``conv2d`` /
``linear`` in float64 on integer-valued tensors: every product and partial sum is an integer below 2^53,
which float64 represents exactly in any summation order, so the result *is* the integer sum. The builder
checks the a priori bound ``max_c 2^f sum_k |q_w[c, k]| max|q_x| + |q_b[c]| <= 2^31 - 1`` for every layer
(a true int32 accumulator) and raises QuantParamError if a layer could exceed it even at ``f = 0``.
The tests compare with ``mpqlab.quant.integer.conv2d_accumulate`` (int64 im2col), exact by construction
but slower.

Average pooling (MobileNetV1's last conv -> pool -> classifier). The fake-quant model pools the real ReLU
outputs, then quantizes the mean with the classifier's step ``s_fc``. Here the last conv requantizes to a
grid 2^8 times finer (``s_fc / 256``, no upper clamp), the pool sums its H x W codes in integers and
divides by ``H W 256`` rounding to nearest, then clamps to the classifier's range. The classifier's
accumulator is the output: logits = ``s_x s_w acc / 2^f``. The only float operation is quantizing the input
image with the first layer's step, as any integer pipeline starts. Introduced in notebook 11.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from mpqlab.deploy.container import PackedModel
from mpqlab.errors import QuantParamError
from mpqlab.quant.integer import INT32_MAX, QParams, quantize_multiplier, rounding_right_shift
from mpqlab.quant.lsq import lsq_range

POOL_EXTRA_BITS = 8  # the last conv's output grid is 2^8 times finer than the classifier's input grid


@dataclass
class IntegerLayer:
    """One layer's integer program: weight codes, int32 bias, multipliers and the output grid."""

    name: str
    kind: str  # "conv" or "linear"
    codes: torch.Tensor  # int64 q_w, the weight's shape
    bias: torch.Tensor  # (C_out,) int64 q_b, in accumulator units s_x s_w / 2^f
    fraction_bits: int  # f: the sum is shifted left by f bits before the bias is added
    sign: torch.Tensor  # (C_out,) int64 +1 or -1: the sign of a_c
    multiplier: torch.Tensor  # (C_out,) float64 |M_c|; empty for the classifier (it outputs its accumulator)
    m0: torch.Tensor  # (C_out,) int64: |M_c| = m0 2^-(31 + shift)
    shift: torch.Tensor  # (C_out,) int64, >= 0 since |M_c| < 1
    out: QParams | None  # the grid of this layer's output codes (None for the classifier)
    acc_scale: float  # s_x s_w / 2^f: the real value of one accumulator step
    in_q_min: int
    in_q_max: int
    stride: int = 1
    padding: int = 0
    groups: int = 1


def bias_codes(name: str, channel_scale: torch.Tensor, channel_shift: torch.Tensor, acc_scale: float) -> torch.Tensor:
    """``q_b = round(b_c / (a_c acc_scale))`` as int64 values (``acc_scale = s_x s_w / 2^f``)."""
    a = channel_scale.double()
    zero = (a == 0).nonzero().flatten().tolist()
    if zero:
        raise QuantParamError(f"{name}: BN scale gamma/sigma is 0 in channel(s) {zero[:5]}; such a channel is constant "
                              "and cannot be folded into a multiplier")
    return torch.round(channel_shift.double() / (a * acc_scale)).long()  # int32 range: checked by the bound


MAX_FRACTION_BITS = 16  # f: the accumulator's extra fractional bits, for a finer int32 bias


def accumulator_bound(codes: torch.Tensor, x_max: int, bias: torch.Tensor, fraction_bits: int = 0) -> int:
    """``max_c 2^f sum_k |q_w[c, k]| * x_max + |q_b[c]|``: no accumulator of this layer can exceed it."""
    sums = codes.abs().reshape(codes.shape[0], -1).sum(dim=1)  # (C_out,) sum_k |q_w[c, k]|
    per_channel = (sums * x_max << fraction_bits) + bias.abs()
    return int(per_channel.max())


def fraction_bits(name: str, codes: torch.Tensor, x_max: int, channel: torch.Tensor,
                  acc_scale: float) -> tuple[int, torch.Tensor]:
    """The largest ``f <= MAX_FRACTION_BITS`` whose accumulators provably fit in int32, and the bias at that ``f``."""
    for f in range(MAX_FRACTION_BITS, -1, -1):
        q_b = bias_codes(name, channel[0], channel[1], acc_scale / 2**f)
        if accumulator_bound(codes, x_max, q_b, f) <= INT32_MAX:
            return f, q_b
    raise QuantParamError(f"{name}: an accumulator could exceed 2^31 - 1 even without fractional bits; "
                          "int32 accumulation is not guaranteed for these bit-widths and shapes")


def build_integer_layers(packed: PackedModel) -> list[IntegerLayer]:
    """Turn a packed model's records into integer layers (multipliers, int32 biases, output grids)."""
    records = packed.layers
    kinds = [r["kind"] for r in records]
    if kinds[-1] != "linear" or any(k != "conv" for k in kinds[:-1]):
        raise QuantParamError(f"integer execution expects convs then one linear layer, got {kinds}")
    layers = []
    for i, r in enumerate(records):
        in_q_min, in_q_max = lsq_range(r["a_bits"], r["a_signed"])
        a = r["channel"][0]
        f, q_b = fraction_bits(r["name"], r["codes"], max(abs(in_q_min), in_q_max), r["channel"],
                               r["a_scale"] * r["w_scale"])
        acc_scale = r["a_scale"] * r["w_scale"] / 2**f
        multiplier, out = torch.empty(0, dtype=torch.float64), None
        if i + 1 < len(records):
            nxt = records[i + 1]
            if nxt["a_signed"]:
                raise QuantParamError(f"{nxt['name']}: only the first layer's input may be signed")
            q_max = 2 ** nxt["a_bits"] - 1
            s_y = nxt["a_scale"]
            if nxt["kind"] == "linear":  # average pooling comes between: a finer grid, no upper clamp yet
                s_y, q_max = s_y / 2**POOL_EXTRA_BITS, INT32_MAX
            multiplier = a.double().abs() * acc_scale / s_y
            if bool((multiplier >= 1).any()):  # requantize would shift left and could leave 64 bits
                raise QuantParamError(f"{r['name']}: a requantization multiplier M = {multiplier.max().item():.3g} "
                                      ">= 1 (the output grid is finer than the accumulator's); not supported")
            out = QParams(scale=s_y, zero_point=0, q_min=0, q_max=q_max)
        pairs = [quantize_multiplier(m) for m in multiplier.tolist()]
        layers.append(IntegerLayer(name=r["name"], kind=r["kind"], codes=r["codes"], bias=q_b, fraction_bits=f,
                                   sign=torch.where(a < 0, -1, 1).long(), multiplier=multiplier, out=out,
                                   m0=torch.tensor([p[0] for p in pairs], dtype=torch.int64),
                                   shift=torch.tensor([p[1] for p in pairs], dtype=torch.int64),
                                   acc_scale=acc_scale, in_q_min=in_q_min, in_q_max=in_q_max,
                                   stride=r["stride"], padding=r["padding"], groups=r["groups"]))
    return layers


def accumulate(layer: IntegerLayer, q_x: torch.Tensor) -> torch.Tensor:
    """``2^f sum_k q_w q_x + q_b`` as int64 values (exact: float64 holds every integer below 2^53; see module doc)."""
    x, w = q_x.double(), layer.codes.double()
    if layer.kind == "conv":
        acc = F.conv2d(x, w, None, layer.stride, layer.padding, 1, layer.groups)  # (N, C_out, H', W')
        return (acc.long() << layer.fraction_bits) + layer.bias[:, None, None]
    return (F.linear(x, w).long() << layer.fraction_bits) + layer.bias              # (N, C_out)


def requantize_once(acc: torch.Tensor, layer: IntegerLayer) -> torch.Tensor:
    """``q_y = clamp(round(acc m0 / 2^(31 + shift)) + z_y, q_min, q_max)`` per output channel, one rounding.

    ``|acc| < 2^31`` and ``m0 < 2^31``, so the product fits in int64 exactly; ``rounding_right_shift``
    rounds halves away from zero. ``acc`` is (N, C, ...) with the sign of ``a_c`` already applied.
    """
    shape = (1, -1) + (1,) * (acc.dim() - 2)
    scaled = rounding_right_shift(acc * layer.m0.reshape(shape), 31 + layer.shift.reshape(shape))
    return (scaled + layer.out.zero_point).clamp(layer.out.q_min, layer.out.q_max)


def rounding_divide(x: torch.Tensor, divisor: int) -> torch.Tensor:
    """``round(x / divisor)`` for x >= 0, halves rounded up: ``(x + divisor // 2) // divisor``."""
    return torch.div(x + divisor // 2, divisor, rounding_mode="floor")


class IntegerModel:
    """A packed model run with integers only; ``IntegerModel(load_packed(path))(images)`` returns logits.

    ``forward_codes(q_x, observe)`` is the integer program proper: it takes the first layer's input codes and
    returns the classifier's int accumulators; ``observe(name, q_x)`` sees every layer's input codes.
    """

    def __init__(self, packed: PackedModel):
        self.layers = build_integer_layers(packed)
        self.input_scale = packed.layers[0]["a_scale"]
        self.output_scale = self.layers[-1].acc_scale  # logits = output_scale * accumulator

    def quantize_input(self, images: torch.Tensor) -> torch.Tensor:
        """The image's codes ``round(clip(x / s_x, q_min, q_max))``, exactly as the first LSQ quantizer rounds."""
        first = self.layers[0]
        step = torch.tensor(self.input_scale, dtype=images.dtype)
        return torch.round(torch.div(images, step).clamp(first.in_q_min, first.in_q_max)).long()

    def forward_codes(self, q_x: torch.Tensor, observe=None) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            if observe is not None:
                observe(layer.name, q_x)
            acc = accumulate(layer, q_x)
            if layer.out is None:
                return acc  # the classifier: (N, classes) int accumulators
            acc = layer.sign.reshape(-1, *[1] * (acc.dim() - 2)) * acc  # keep every multiplier positive
            q_x = requantize_once(acc, layer)
            if layer.out.q_max == INT32_MAX:  # average pooling before the classifier, in integers
                nxt = self.layers[i + 1]
                total = q_x.sum(dim=(2, 3))                                       # (N, C)
                q_x = rounding_divide(total, q_x.shape[2] * q_x.shape[3] * 2**POOL_EXTRA_BITS)
                q_x = q_x.clamp(nxt.in_q_min, nxt.in_q_max)
        raise QuantParamError("the last layer must be the classifier")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Float logits ``s_x s_w acc`` of the classifier, computed with integers from the input codes on."""
        return self.output_scale * self.forward_codes(self.quantize_input(images)).double()


@torch.no_grad()
def compare_integer(qmodel: torch.nn.Module, packed: PackedModel, dataset, batch_size: int = 500,
                    device: str = "cpu", progress: bool = True) -> dict:
    """Run the fake-quant ``qmodel`` and the integer path on ``dataset``; how far apart are they?

    Returns the share of identical predictions, the largest logit difference (real units) beside the largest
    |logit| for scale, both accuracies, and per layer the share of input codes that are identical and the
    largest code difference (in that layer's activation steps).
    """
    integer = IntegerModel(packed)
    qmodel = qmodel.eval().to(device)
    modules = dict(qmodel.named_modules())
    fake_codes: dict[str, torch.Tensor] = {}

    def capture(name):
        q = modules[name].a_quantizer
        q_min, q_max = lsq_range(q.bits, q.signed)

        def hook(module, inputs):  # the codes the LSQ quantizer rounds to, by its own formula
            fake_codes[name] = torch.round(torch.div(inputs[0], q.step).clamp(q_min, q_max)).to(torch.int16)
        return hook

    hooks = [modules[layer.name].a_quantizer.register_forward_pre_hook(capture(layer.name))
             for layer in integer.layers]
    same_codes = {layer.name: 0 for layer in integer.layers}
    max_code_diff = {layer.name: 0 for layer in integer.layers}
    counts = {layer.name: 0 for layer in integer.layers}

    def observe(name, q_x):
        diff = (q_x - fake_codes[name].long()).abs()
        same_codes[name] += int((diff == 0).sum())
        max_code_diff[name] = max(max_code_diff[name], int(diff.max()))
        counts[name] += diff.numel()

    x_all, y_all = dataset.tensors
    same = correct_fake = correct_int = 0
    max_diff = max_logit = 0.0
    try:
        for start in tqdm(range(0, len(x_all), batch_size), desc="integer vs fake quant", disable=not progress):
            images, labels = x_all[start:start + batch_size].to(device), y_all[start:start + batch_size].to(device)
            logits_fake = qmodel(images).double()
            logits_int = integer.output_scale * integer.forward_codes(integer.quantize_input(images), observe).double()
            pred_fake, pred_int = logits_fake.argmax(1), logits_int.argmax(1)
            same += int((pred_fake == pred_int).sum())
            correct_fake += int((pred_fake == labels).sum())
            correct_int += int((pred_int == labels).sum())
            max_diff = max(max_diff, float((logits_fake - logits_int).abs().max()))
            max_logit = max(max_logit, float(logits_fake.abs().max()))
    finally:
        for h in hooks:
            h.remove()
    n = len(x_all)
    return {"images": n, "same_prediction": same / n, "max_logit_diff": max_diff,
            "max_abs_logit": max_logit,
            "fake_quant_accuracy": correct_fake / n, "integer_accuracy": correct_int / n,
            "same_codes": {k: same_codes[k] / counts[k] for k in counts},
            "max_code_diff": max_code_diff}
