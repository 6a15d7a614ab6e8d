"""Quantization-aware training (QAT) in a few lines: build a model for a learnable method, fine-tune it briefly.

``build_qat_model(model, method, bits)`` puts one method's quantizers on every conv/linear layer:

    pact     PACT activations (learned clip alpha)   + DoReFa weights      (Choi et al. 2018)
    qil      QIL intervals (c, d, gamma)                                  (Jung et al. 2019)
    lsq      LSQ step sizes s, g = 1/sqrt(N Q_P)                          (Esser et al. 2020)
    lsq_plus LSQ+ step sizes and a learned activation offset beta         (Bhalgat et al. 2020)

at W``bits``A``bits``, except the first conv and the classifier, which keep 8-bit LSQ quantizers for every
method (the first one signed: the normalised image is negative in places, and PACT would clip that half
away). ``fine_tune`` then runs a short, seeded SGD fine-tune with two learning rates: the network's
weights get ``lr``, the quantizer parameters a smaller ``quant_lr`` without weight decay (with SGD at
lr 0.05 and momentum a step size can overshoot below zero, which the quantizers refuse).

Used by the learnable-quantization notebook (06), the binarization notebook (08) and the scripts
``mpqlab.experiments.qat_sweep`` / ``mpqlab.experiments.binary``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from mpqlab.errors import PolicyError, QuantParamError, check_positive
from mpqlab.quant.lsq import LSQQuantizer, lsq_act_quantizer, lsq_range, lsq_weight_quantizer
from mpqlab.quant.lsq_plus import LSQPlusQuantizer, lsq_plus_mse_init, lsq_plus_weight_quantizer
from mpqlab.quant.pact import DoReFaWeightQuantizer, PACTQuantizer, pact_act_quantizer, pact_weight_quantizer
from mpqlab.quant.policy import quantizable_layers, quantize_model, uniform_policy
from mpqlab.quant.qil import QILQuantizer, qil_act_quantizer, qil_weight_quantizer
from mpqlab.train import cosine_schedule, evaluate, repeat_epochs, seed_everything

def lsq_plus_mse_act_quantizer(bits: int, name: str = "", layer: nn.Module | None = None) -> LSQPlusQuantizer:
    """LSQ+ activations started by ``lsq_plus_mse_init``: a one-dimensional MSE search over s with beta fixed at the
    minimum (the paper minimises the same error over (s, beta) jointly; see mpqlab/quant/lsq_plus.py)."""
    return LSQPlusQuantizer(bits, "act", init="mse")


# method -> (weight factory, activation factory), each f(bits, layer_name, layer) -> Quantizer
METHODS = {
    "pact": (pact_weight_quantizer, pact_act_quantizer),
    "qil": (qil_weight_quantizer, qil_act_quantizer),
    "lsq": (lsq_weight_quantizer, lsq_act_quantizer),
    "lsq_plus": (lsq_plus_weight_quantizer, lsq_plus_mse_act_quantizer),
}
LABELS = {"pact": "PACT", "qil": "QIL", "lsq": "LSQ", "lsq_plus": "LSQ+"}
QUANT_PARAMS = ("alpha", "c", "d", "gamma", "steps", "step", "offset")  # learnable quantizer parameter names


def edge_quantizers(bits: int, first: bool) -> tuple[LSQQuantizer, LSQQuantizer]:
    """The (weight, activation) LSQ quantizers of the first or last layer; the first layer's input is signed."""
    return LSQQuantizer(bits, "weight"), LSQQuantizer(bits, "act", signed=first)


def build_qat_model(model: nn.Module, method: str, bits: int, first_last_bits: int = 8,
                    grad_scale: bool = True, weight_factory=None, act_factory=None,
                    a_bits: int | None = None) -> nn.Module:
    """A quantized copy of ``model``: ``method`` at W``bits``A``bits``, first and last layers at ``first_last_bits``.

    ``a_bits`` gives the activations a bit-width of their own (W``bits``A``a_bits``).

    ``first_last_bits=None`` quantizes the first and last layers with the method's factories like the rest.

    ``grad_scale=False`` (LSQ and LSQ+ only) sets LSQ's gradient scale g to 1. ``weight_factory`` /
    ``act_factory`` replace the method's factories (the binarization notebook passes binary ones).
    """
    if method not in METHODS:
        raise PolicyError(f"unknown QAT method {method!r}; choose one of {sorted(METHODS)}")
    w_factory, a_factory = METHODS[method]
    w_factory, a_factory = weight_factory or w_factory, act_factory or a_factory
    names = quantizable_layers(model)
    first, last = names[0], names[-1]

    edges = (first, last) if first_last_bits is not None else ()

    def weights(b, name, layer):
        return edge_quantizers(b, name == first)[0] if name in edges else w_factory(b, name, layer)

    def acts(b, name, layer):
        return edge_quantizers(b, name == first)[1] if name in edges else a_factory(b, name, layer)

    a_bits = bits if a_bits is None else a_bits
    qmodel = quantize_model(model, uniform_policy(model, bits, a_bits, first_last_bits),
                            weight_quantizer=weights, act_quantizer=acts)
    if not grad_scale:
        for q in qmodel.modules():
            if isinstance(q, (LSQQuantizer, LSQPlusQuantizer)):
                q.grad_scale = False
    return qmodel


def mse_clip(x: torch.Tensor, levels: int) -> float:
    """The upper end ``hi`` of the range ``[min x, hi]`` whose ``levels``-step grid gives the least squared error."""
    s, low = lsq_plus_mse_init(x, 0, levels)
    return low + s * levels


@torch.no_grad()
def initialize_quantizers(qmodel: nn.Module, images: torch.Tensor, device: str = "cpu") -> None:
    """One forward pass in eval mode, so that every lazily initialised quantizer sets its parameters from data.

    PACT's clip ``alpha`` and QIL's interval (``c = d``, nothing pruned) then move to the least-squares clip of
    what they saw (``mse_clip``), instead of the papers' ``alpha = 10`` and our max-based QIL start: at 2 bits
    a clip at the maximum rounds most activations to 0, a whole channel becomes constant, batch norm divides
    by its near-zero variance and the gradients explode (we measured 1e18) within one step.
    """
    seen: dict = {}

    def record(module, inputs):
        x = inputs[0].detach().flatten()
        seen[module] = x[:: max(1, x.numel() // 65536)]

    hooks = []
    for layer in qmodel.modules():
        if isinstance(getattr(layer, "a_quantizer", None), (PACTQuantizer, QILQuantizer)):
            hooks.append(layer.a_quantizer.register_forward_pre_hook(record))
    qmodel.eval().to(device)
    try:
        qmodel(images.to(device))
    finally:
        for h in hooks:
            h.remove()
    for layer in qmodel.modules():
        a_q, w_q = getattr(layer, "a_quantizer", None), getattr(layer, "w_quantizer", None)
        # a clip of 0 (an input that was all zeros) keeps the quantizer's own start
        if isinstance(a_q, PACTQuantizer) and a_q in seen and (top := mse_clip(seen[a_q], 2**a_q.bits - 1)) > 0:
            a_q.alpha.fill_(top)
        if isinstance(a_q, QILQuantizer) and a_q in seen and (top := mse_clip(seen[a_q], a_q.levels)) > 0:
            a_q.c.fill_(top / 2)
            a_q.d.fill_(top / 2)
        if isinstance(w_q, QILQuantizer) and (top := mse_clip(layer.weight.detach().abs(), w_q.levels)) > 0:
            w_q.c.fill_(top / 2)
            w_q.d.fill_(top / 2)


def param_groups(qmodel: nn.Module, lr: float, quant_lr: float, weight_decay: float = 0.0) -> list[dict]:
    """Two SGD groups: network weights (``lr``, ``weight_decay``) and quantizer parameters (``quant_lr``, no decay)."""
    quant, rest = [], []
    for name, p in qmodel.named_parameters():
        parts = name.split(".")
        is_quant = any(part.endswith("quantizer") for part in parts) and (
            parts[-1] in QUANT_PARAMS or parts[-2] in QUANT_PARAMS)
        (quant if is_quant else rest).append(p)
    return [{"params": rest, "lr": lr, "weight_decay": weight_decay},
            {"params": quant, "lr": quant_lr, "weight_decay": 0.0}]


def subset_loader(dataset: TensorDataset, n: int, batch_size: int = 1000) -> DataLoader:
    """The first ``n`` items of ``dataset`` (a fixed subset: every run is scored on the same images)."""
    x, y = dataset.tensors
    return DataLoader(TensorDataset(x[:n], y[:n]), batch_size=batch_size)


@dataclass
class QATResult:
    """What ``fine_tune`` measured."""

    start_accuracy: float  # before fine-tuning (the quantizers' initial parameters)
    accuracy: float  # after fine-tuning, on the same images
    steps: list = field(default_factory=list)  # step index at the end of each chunk
    train_loss: list = field(default_factory=list)  # mean training loss over each chunk
    val_accuracy: list = field(default_factory=list)  # accuracy on the curve subset after each chunk
    seconds: float = 0.0


def frozen_bn_train(model: nn.Module) -> nn.Module:
    """Training mode, except batch norm, which keeps using (and no longer updates) its running statistics.

    Freezing batch norm is common in QAT (Krishnamoorthi 2018). Here it also prevents a failure we measured: at
    2 bits a channel can become constant, its batch variance ~0, and batch norm's 1/sqrt(var + eps) multiplies the
    gradient by ~300 at each such layer, 1e18 by the input.
    """
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: torch.Tensor, batch_size: int = 256, device: str = "cpu") -> None:
    """Re-estimate every batch norm's running mean and variance on ``images`` (the quantized network's own).

    Quantizing changes each layer's output distribution; statistics measured on the float network then
    normalise it wrongly (a 2-bit DoReFa layer's outputs are several times larger than the float ones).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # None: a plain average over the batches seen
    model.train().to(device)
    for i in range(0, len(images), batch_size):
        model(images[i:i + batch_size].to(device))
    for bn, momentum in zip(bns, saved):
        bn.momentum = momentum
    model.eval()


def fine_tune(qmodel: nn.Module, splits, steps: int = 60, lr: float = 0.01, quant_lr: float = 0.001,
              chunk: int = 10, eval_images: int = 2000, curve_images: int = 500, batch_size: int = 128,
              seed: int = 0, extra_loss=None, max_grad_norm: float = 1.0, device: str = "cpu",
              initialize: bool = True) -> QATResult:
    """``steps`` SGD steps (momentum 0.9, cosine decay) on seeded batches, scoring every ``chunk`` steps.

    Before training, the quantizers are initialised from data and batch norm re-estimates its statistics on
    the quantized network (``recalibrate_bn``); during training batch norm stays frozen and the gradient's
    global norm is clipped to ``max_grad_norm``: both keep a few dozen steps from blowing up at 2 bits.

    Accuracy is measured on the first ``eval_images`` test images before and after; the curve uses the
    first ``curve_images`` validation images. ``extra_loss(model)`` is added to the loss (PACT's L2 on alpha).
    ``initialize=False`` keeps the quantizers' learned parameters (the next stage of a progressive schedule,
    after lowering the bit-width); batch norm is re-estimated either way.
    """
    check_positive(lr, name="lr"), check_positive(quant_lr, name="quant_lr")
    if steps < 1 or chunk < 1:
        raise QuantParamError(f"steps and chunk must be at least 1, got steps={steps}, chunk={chunk}")
    start = time.perf_counter()
    seed_everything(seed)
    x, _ = splits.train.tensors
    if initialize:
        initialize_quantizers(qmodel, x[:256], device)
    recalibrate_bn(qmodel, x[:1024], device=device)
    scorer, curve = subset_loader(splits.test, eval_images), subset_loader(splits.val, curve_images)
    result = QATResult(start_accuracy=evaluate(qmodel, scorer, device), accuracy=float("nan"))
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(splits.train, batch_size=batch_size, shuffle=True, generator=generator, drop_last=True)
    optimizer = torch.optim.SGD(param_groups(qmodel, lr, quant_lr), momentum=0.9)
    scheduler = cosine_schedule(optimizer, steps)
    batches, losses = repeat_epochs(loader), []
    for step in tqdm(range(1, steps + 1), desc="fine-tune", leave=False):
        frozen_bn_train(qmodel)
        images, labels = next(batches)
        loss = nn.functional.cross_entropy(qmodel(images.to(device)), labels.to(device))
        if extra_loss is not None:
            loss = loss + extra_loss(qmodel)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(qmodel.parameters(), max_grad_norm)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % chunk == 0 or step == steps:
            result.steps.append(step)
            result.train_loss.append(sum(losses) / len(losses))
            result.val_accuracy.append(evaluate(qmodel, curve, device))
            losses = []
    result.accuracy = evaluate(qmodel, scorer, device)
    result.seconds = time.perf_counter() - start
    return result


def clip_range(quantizer: nn.Module) -> tuple[float, float]:
    """The interval ``[low, high]`` a quantizer's grid covers, in the units of its input.

    PACT ``[0, alpha]``; QIL ``[c - d, c + d]`` (values below c - d are pruned to 0); LSQ ``[s q_min, s q_max]``;
    LSQ+ ``[beta + s q_min, beta + s q_max]``.
    """
    if isinstance(quantizer, PACTQuantizer):
        return 0.0, float(quantizer.alpha.detach())
    if isinstance(quantizer, QILQuantizer):
        c, d = float(quantizer.c.detach()), float(quantizer.d.detach())
        return c - d, c + d
    if isinstance(quantizer, LSQQuantizer):
        q_min, q_max = lsq_range(quantizer.bits, quantizer.signed)
        s = float(quantizer.step.detach())
        return s * q_min, s * q_max
    if isinstance(quantizer, LSQPlusQuantizer):
        q_min, q_max = lsq_range(quantizer.bits, quantizer.role == "weight")
        s = float(quantizer.step.detach())
        beta = 0.0 if quantizer.offset is None else float(quantizer.offset.detach())
        return beta + s * q_min, beta + s * q_max
    raise QuantParamError(f"no learned clip range for {type(quantizer).__name__}")


@torch.no_grad()
def clip_vs_max(qmodel: nn.Module, images: torch.Tensor, device: str = "cpu") -> list[dict]:
    """Per quantized layer: the activation clip's upper end and the largest input value it saw on ``images``.

    Also the weight clip against ``max |W|`` (DoReFa weights have no learned clip: ratio 1 by construction).
    """
    seen: dict[str, float] = {}
    hooks = []
    layers = {name: m for name, m in qmodel.named_modules() if hasattr(m, "a_quantizer")}
    for name, layer in layers.items():
        def record(module, inputs, name=name):
            seen[name] = max(seen.get(name, float("-inf")), float(inputs[0].max()))
        hooks.append(layer.a_quantizer.register_forward_pre_hook(record))
    qmodel.eval().to(device)
    try:
        qmodel(images.to(device))
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for name, layer in layers.items():
        a_high = clip_range(layer.a_quantizer)[1]
        w_max = float(layer.weight.abs().max())
        w_q = layer.w_quantizer
        w_high = w_max if isinstance(w_q, DoReFaWeightQuantizer) else max(abs(v) for v in clip_range(w_q))
        rows.append({"layer": name, "a_bits": layer.a_quantizer.bits, "a_clip": a_high, "a_max": seen[name],
                     "w_clip": w_high, "w_max": w_max})
    return rows
