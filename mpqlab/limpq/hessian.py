"""A Hessian-trace importance criterion (HAWQ-v2 style) for the same ILP as LIMPQ's learned indicators.

Dong et al., "HAWQ-V2: Hessian Aware trace-Weighted Quantization of Neural Networks", NeurIPS 2020.
A layer is sensitive if the loss curves strongly around its weights W_l (or its input activations
A_l) *and* quantizing them moves them far:

    Omega_l(b) = Tr(H_l) / n_l * || Q_b(W_l) - W_l ||^2          (n_l = number of entries of W_l)

The trace comes from Hutchinson's estimator: for random Rademacher vectors v (entries +-1 with equal
probability) E[v^T H v] = Tr(H), and H v is one extra backward pass through the gradient
(Pearlmutter's trick), so no Hessian is ever formed:

    Tr(H_l) ~ (1 / m) sum_{j=1..m} v_j^T (H v_j)_l

Q_b is per-tensor symmetric min-max for weights and unsigned min-max for activations. Unlike LIMPQ's
indicators this is measured on the *float* network (the bias the LIMPQ paper points out); notebook 10
puts both criteria in the same ILP and compares the fine-tuned results.
"""

from __future__ import annotations

import torch
from torch import nn

from mpqlab.cost import layer_table
from mpqlab.limpq.indicators import FixedLayer, Indicators
from mpqlab.quant.policy import quantizable_layers
from mpqlab.quant.uniform import fake_quantize, qparams_from_range, quant_range


def hutchinson_traces(model: nn.Module, layers: list[str], images: torch.Tensor, labels: torch.Tensor,
                      probes: int = 8, seed: int = 0) -> tuple[dict[str, float], dict[str, float], dict]:
    """(weight traces, activation traces, the activations seen): Tr(H) per layer, averaged over ``probes``.

    The model is put in eval mode (BatchNorm uses its running statistics, as at deployment).
    """
    model.eval()
    modules = dict(model.named_modules())
    seen: dict[str, torch.Tensor] = {}

    def keep_input(name):
        def hook(module, inputs):
            seen[name] = inputs[0]
        return hook

    hooks = [modules[n].register_forward_pre_hook(keep_input(n)) for n in layers]
    try:
        loss = nn.functional.cross_entropy(model(images), labels)
    finally:
        for h in hooks:
            h.remove()
    weights = [modules[n].weight for n in layers]
    acts = [seen[n] for n in layers]
    grads = torch.autograd.grad(loss, weights + acts, create_graph=True)
    gen = torch.Generator().manual_seed(seed)
    sums = [0.0] * len(grads)
    for _ in range(probes):
        vs = [torch.randint(0, 2, g.shape, generator=gen).to(g) * 2 - 1 for g in grads]  # Rademacher +-1
        hvs = torch.autograd.grad(grads, weights + acts, grad_outputs=vs, retain_graph=True)
        sums = [s + float((hv * v).sum()) for s, hv, v in zip(sums, hvs, vs)]
    w_trace = {n: s / probes for n, s in zip(layers, sums[:len(layers)])}
    a_trace = {n: s / probes for n, s in zip(layers, sums[len(layers):])}
    return w_trace, a_trace, {n: a.detach() for n, a in zip(layers, acts)}


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
                       bit_options=(2, 3, 4, 5, 6), probes: int = 8, seed: int = 0,
                       input_size=(1, 1, 32, 32), fixed_bits: int = 8) -> tuple[Indicators, dict]:
    """HAWQ-v2 sensitivities Omega_l(b) as an ``Indicators`` object (first and last layers fixed).

    A negative trace estimate (possible for a non-convex loss with few probes) is clipped to 0.
    Returns (indicators, {"weight_trace": ..., "act_trace": ...}) so the traces can be shown.
    """
    names = quantizable_layers(fp_model)
    layers, fixed = names[1:-1], [names[0], names[-1]]
    w_trace, a_trace, acts = hutchinson_traces(fp_model, layers, images, labels, probes, seed)
    modules = dict(fp_model.named_modules())
    table = layer_table(fp_model, input_size)

    def omega(trace, x, signed):
        return {b: max(trace, 0.0) / x.numel() * quant_error(x, b, signed) for b in bit_options}

    ind = Indicators(
        layer_names=layers,
        weight_indicators={n: omega(w_trace[n], modules[n].weight, True) for n in layers},
        act_indicators={n: omega(a_trace[n], acts[n], False) for n in layers},
        layer_macs={n: int(table.macs[n]) for n in layers},
        layer_params={n: int(table.params[n]) for n in layers},
        fixed_layers={n: FixedLayer(int(table.macs[n]), int(table.params[n]), fixed_bits, fixed_bits) for n in fixed},
    )
    return ind, {"weight_trace": w_trace, "act_trace": a_trace}
