"""A Hessian-trace importance criterion (HAWQ-v2 style) for the same ILP as LIMPQ's learned indicators.

Dong et al., "HAWQ-V2: Hessian Aware trace-Weighted Quantization of Neural Networks", NeurIPS 2020.
A layer is sensitive if the loss curves strongly around its weights W_l (or its input activations
A_l) *and* quantizing them moves them far:

    Omega_l(b) = |Tr(H_l)| / n_l * || Q_b(W_l) - W_l ||^2          (n_l = number of entries of W_l)

The trace comes from Hutchinson's estimator: for random Rademacher vectors v (entries +-1 with equal
probability) E[v^T H v] = Tr(H), and H v is one extra backward pass through the gradient
(Pearlmutter's trick), so no Hessian is ever formed:

    Tr(H_l) ~ mean_j t_j,   t_j = v_j^T (H v_j)_l,   standard error SE = sd(t) / sqrt(m)

Probes are added until every trace is known to ``target_rse`` (SE / |mean|), as HAWQ-v2 does with
its 1e-3 relative-change stopping rule, so the criterion is not ranked on noise. The loss is the mean
cross-entropy over all calibration images, processed in chunks so memory stays bounded.

Q_b is per-tensor symmetric min-max for weights and unsigned min-max for activations. Unlike LIMPQ's
indicators this is measured on the *float* network (the bias the LIMPQ paper points out); notebook 10
puts both criteria in the same ILP and compares the fine-tuned results.
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from mpqlab.cost import layer_table
from mpqlab.errors import PolicyError, UsageError
from mpqlab.limpq.indicators import FixedLayer, Indicators
from mpqlab.quant.policy import quantizable_layers
from mpqlab.quant.uniform import fake_quantize, qparams_from_range, quant_range


@dataclass
class TraceEstimate:
    """Hutchinson estimate of one trace Tr(H): every per-probe sample t_j = v_j^T H v_j is kept."""

    samples: list[float] = field(default_factory=list)

    @property
    def probes(self) -> int:
        return len(self.samples)

    @property
    def mean(self) -> float:
        return math.fsum(self.samples) / len(self.samples)

    @property
    def se(self) -> float:
        """Standard error of the mean, sd(t) / sqrt(m) with the unbiased (m - 1) sample deviation."""
        m, mean = len(self.samples), self.mean
        return math.sqrt(math.fsum((t - mean) ** 2 for t in self.samples) / (m - 1) / m) if m > 1 else math.inf

    @property
    def rse(self) -> float:
        """Relative standard error SE / |mean|; 0 when every sample agrees (the estimate cannot move)."""
        se = self.se
        if se == 0:
            return 0.0
        return se / abs(self.mean) if self.mean != 0 else math.inf

    @property
    def negative(self) -> bool:
        return self.mean < 0


@dataclass
class HutchinsonTraces:
    """What ``hutchinson_traces`` measured: one ``TraceEstimate`` per layer for W_l and for A_l."""

    weight: dict[str, TraceEstimate]  # Tr(d^2 L / dW_l^2)
    act: dict[str, TraceEstimate]  # Tr(d^2 L / dA_l^2), A_l = the layer's input over all images
    activations: dict[str, torch.Tensor]  # A_l over all images, detached (N, ...): Q_b(A_l) needs them
    probes: int  # probes used (the same for every trace)
    images: int
    converged: bool  # every trace reached target_rse (False: stopped at max_probes)
    seconds: float


def _check_int(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise UsageError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_args(layers, modules, images, labels, min_probes, max_probes, target_rse, chunk_size) -> None:
    _check_int(min_probes, "min_probes", 2)  # a standard error needs two samples
    _check_int(max_probes, f"max_probes (>= min_probes = {min_probes})", min_probes)
    _check_int(chunk_size, "chunk_size", 1)
    if isinstance(target_rse, bool) or not isinstance(target_rse, numbers.Real) or not target_rse > 0 \
            or not math.isfinite(target_rse):
        raise UsageError(f"target_rse must be a positive finite number, got {target_rse!r}")
    if len(images) < 1:
        raise UsageError(f"images must hold at least 1 image, got {len(images)}")
    if len(images) != len(labels):
        raise UsageError(f"images and labels must have the same length, got {len(images)} images and "
                         f"{len(labels)} labels")
    unknown = [n for n in layers if n not in modules or not hasattr(modules[n], "weight")]
    if not layers or unknown:
        raise PolicyError(f"layers must name modules with a weight in the model, got unknown {unknown or layers!r}")


def _forward_keeping_inputs(model, layers, modules, x):
    """(logits, {layer: its input}) for one forward pass of ``x``."""
    seen: dict[str, torch.Tensor] = {}

    def keep_input(name):
        def hook(module, inputs):
            seen[name] = inputs[0]
        return hook

    hooks = [modules[n].register_forward_pre_hook(keep_input(n)) for n in layers]
    try:
        logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    return logits, seen


def _rademacher(shape, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Entries +-1 with equal probability, drawn on the CPU (the same numbers on every device)."""
    return (torch.randint(0, 2, shape, generator=gen) * 2 - 1).to(device=like.device, dtype=like.dtype)


def hutchinson_traces(model: nn.Module, layers: list[str], images: torch.Tensor, labels: torch.Tensor,
                      min_probes: int = 20, max_probes: int = 200, target_rse: float = 0.05,
                      chunk_size: int = 256, seed: int = 0, device: str = "cpu",
                      progress: bool = True) -> HutchinsonTraces:
    """Hutchinson estimates of Tr(H) wrt W_l and wrt A_l for each layer, of L = mean CE over all ``images``.

    Probe j draws one Rademacher vector per tensor (weights in ``layers`` order, then the activations of
    all N images) and gives one sample t_j = v^T H v per trace. The images go through the model in
    chunks c of at most ``chunk_size``; with L_c = (n_c / N) * (mean CE over chunk c), L = sum_c L_c, so

        v_W^T H_W v_W = sum_c v_W^T (d^2 L_c / dW^2) v_W
        v_A^T H_A v_A = sum_c v_Ac^T (d^2 L_c / dA_c^2) v_Ac      (A_c affects only L_c in eval mode)

    and the answer does not depend on ``chunk_size`` (up to float rounding). Stops after probe m once
    m >= ``min_probes`` and every trace has SE / |mean| < ``target_rse``, or at m = ``max_probes``.
    The model is put in eval mode on ``device`` (BatchNorm uses its running statistics, as at deployment).
    Negative means are kept as measured (see ``hessian_indicators`` for how Omega uses them).
    """
    modules = dict(model.named_modules())
    _check_args(layers, modules, images, labels, min_probes, max_probes, target_rse, chunk_size)
    start = time.perf_counter()
    model.eval().to(device)
    n = len(images)
    chunks = [(i, min(i + chunk_size, n)) for i in range(0, n, chunk_size)]
    with torch.no_grad():  # the activations once, for Omega and for the shapes of their probes
        seen = [_forward_keeping_inputs(model, layers, modules, images[i:j].to(device))[1] for i, j in chunks]
    activations = {name: torch.cat([s[name] for s in seen]) for name in layers}  # (N, ...)
    del seen
    weights = [modules[name].weight for name in layers]
    gen = torch.Generator().manual_seed(seed)
    w_est = {name: TraceEstimate() for name in layers}
    a_est = {name: TraceEstimate() for name in layers}
    estimates = list(w_est.values()) + list(a_est.values())
    bar = tqdm(range(max_probes), desc="Hutchinson probes", disable=not progress)
    for m in bar:
        v_w = [_rademacher(w.shape, gen, w) for w in weights]
        v_a = [_rademacher(activations[name].shape, gen, activations[name]) for name in layers]
        sample = [0.0] * len(estimates)
        for i, j in chunks:
            x = images[i:j].to(device).requires_grad_(True)  # so a layer fed by the image has an input grad
            logits, acts = _forward_keeping_inputs(model, layers, modules, x)
            loss = (j - i) / n * nn.functional.cross_entropy(logits, labels[i:j].to(device))
            inputs = weights + [acts[name] for name in layers]
            grads = torch.autograd.grad(loss, inputs, create_graph=True)
            vs = v_w + [v[i:j] for v in v_a]
            # a gradient with no graph is constant: its part of H v is zero, so it is left out
            pairs = [(g, v) for g, v in zip(grads, vs) if g.requires_grad]
            hvs = torch.autograd.grad([g for g, _ in pairs], inputs, grad_outputs=[v for _, v in pairs],
                                      allow_unused=True)
            sample = [s + (float((hv * v).sum()) if hv is not None else 0.0)
                      for s, hv, v in zip(sample, hvs, vs)]
        for est, t in zip(estimates, sample):
            est.samples.append(t)
        worst = max(est.rse for est in estimates)  # inf after the first probe: no SE from one sample
        bar.set_postfix(worst_rse=f"{worst:.3f}")
        if m + 1 >= min_probes and worst < target_rse:
            break
    bar.close()
    return HutchinsonTraces(w_est, a_est, activations, probes=m + 1, images=n, converged=worst < target_rse,
                            seconds=time.perf_counter() - start)


def quant_error(x: torch.Tensor, bits: int, signed: bool) -> float:
    """|| Q_b(x) - x ||^2 with a per-tensor min-max grid (symmetric if ``signed``, else [0, max])."""
    x = x.detach()
    top = float(x.abs().max()) if signed else float(x.clamp(min=0).max())
    if top == 0:
        return 0.0
    scale, zero_point = qparams_from_range(-top if signed else 0.0, top, bits, symmetric=True, signed=signed,
                                           narrow=signed)
    q_min, q_max = quant_range(bits, signed, narrow=signed)
    return float(((fake_quantize(x, scale, zero_point, q_min, q_max) - x) ** 2).sum())


def hessian_indicators(fp_model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                       bit_options=(2, 3, 4, 5, 6), min_probes: int = 20, max_probes: int = 200,
                       target_rse: float = 0.05, chunk_size: int = 256, seed: int = 0,
                       input_size=(1, 1, 32, 32), fixed_bits: int = 8, device: str = "cpu",
                       progress: bool = True) -> tuple[Indicators, dict]:
    """HAWQ-v2 sensitivities as ``Indicators`` (first and last layers fixed at ``fixed_bits``):

        Omega_l(b) = |Tr(H_l)| / n_l * || Q_b(x) - x ||^2      (x = W_l or A_l, n_l = its number of entries)

    Negative traces: Omega uses the magnitude |Tr(H_l)|, never a value clipped to 0. With a converged
    estimate a negative mean says the loss curves *downward* along that layer on average; a quadratic
    model of the loss cannot read that as "insensitive" (a perturbation still changes the loss by about
    |Tr| / n * ||dx||^2), and clipping would make the layer free to quantize to 2 bits. The layers with a
    negative mean are listed in the returned dict, whose values (with their SE) are there to be shown.

    Returns (indicators, traces) with ``traces`` JSON-serialisable: {"weight_trace", "weight_trace_se",
    "act_trace", "act_trace_se": {layer: float}, "probes", "images", "converged", "target_rse",
    "negative_rule": "abs", "negative_weight_layers", "negative_act_layers", "seconds"}.
    """
    names = quantizable_layers(fp_model)
    layers, fixed = names[1:-1], [names[0], names[-1]]
    est = hutchinson_traces(fp_model, layers, images, labels, min_probes, max_probes, target_rse, chunk_size,
                            seed, device, progress)
    modules = dict(fp_model.named_modules())
    table = layer_table(fp_model, input_size)

    def omega(trace: TraceEstimate, x, signed):
        return {b: abs(trace.mean) / x.numel() * quant_error(x, b, signed) for b in bit_options}

    ind = Indicators(
        layer_names=layers,
        weight_indicators={n: omega(est.weight[n], modules[n].weight, True) for n in layers},
        act_indicators={n: omega(est.act[n], est.activations[n], False) for n in layers},
        layer_macs={n: int(table.macs[n]) for n in layers},
        layer_params={n: int(table.params[n]) for n in layers},
        fixed_layers={n: FixedLayer(int(table.macs[n]), int(table.params[n]), fixed_bits, fixed_bits) for n in fixed},
    )
    traces = {
        "weight_trace": {n: est.weight[n].mean for n in layers},
        "weight_trace_se": {n: est.weight[n].se for n in layers},
        "act_trace": {n: est.act[n].mean for n in layers},
        "act_trace_se": {n: est.act[n].se for n in layers},
        "probes": est.probes, "images": est.images, "converged": est.converged, "target_rse": float(target_rse),
        "negative_rule": "abs",
        "negative_weight_layers": [n for n in layers if est.weight[n].negative],
        "negative_act_layers": [n for n in layers if est.act[n].negative],
        "seconds": est.seconds,
    }
    return ind, traces
