"""PROFIT (Park & Yoo, ECCV 2020): activation instability induced by weight quantization, and progressive freezing.

**AIWQ.** One optimizer step moves a layer's latent weights a little; its *quantized* weights then
either stay put or jump a whole step. Park & Yoo measure how much the layer's output distribution
moves. We model each output channel c as a Gaussian and average the KL divergence over channels:

    AIWQ_l = 1/C sum_c KL( N(mu_c, var_c) || N(mu_c', var_c') )
    KL(N_p || N_q) = 1/2 [ log(var_q / var_p) + (var_p + (mu_p - mu_q)^2) / var_q - 1 ]

where (mu_c, var_c) are the channel's mean and variance over batch and positions before the step and
(mu_c', var_c') after it. To isolate the layer's own weights we feed it the *same* (quantized) input
before and after the step. (Our estimator; the paper's exact one may differ in details.)

**Progressive freezing.** Layers with the largest AIWQ disturb training most, so PROFIT freezes them
first: train, measure AIWQ, freeze the worst third, train, measure again, freeze the next third, and
finally train only batch norm. Introduced in notebook 07; ``mpqlab.experiments.profit`` runs it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mpqlab.cost import layer_kind
from mpqlab.errors import PolicyError, QuantParamError, check_bits
from mpqlab.quant.hswish_shift import act_quantizer_for, input_activations
from mpqlab.quant.layers import QuantConv2d, QuantLinear
from mpqlab.quant.lsq import lsq_weight_quantizer
from mpqlab.quant.policy import quantize_model, uniform_policy

EPS = 1e-5  # keeps a dead channel's variance off zero in the KL
MAX_GRAD_NORM = 1.0  # short low-bit runs can blow up without it (see mpqlab.qat.fine_tune)


def conv_role(module: nn.Module) -> str:
    """'depthwise', 'expansion' (1x1, more outputs than inputs), 'projection' (1x1, fewer or equal), 'conv', 'linear'."""
    kind = layer_kind(module)
    if kind == "pointwise":
        return "expansion" if module.out_channels > module.in_channels else "projection"
    return kind


def build_profit_model(model: nn.Module, bits: int, scheme: str = "shifted", first_last_bits: int = 8) -> nn.Module:
    """A quantized copy of ``model``: LSQ weights and activations at ``bits``, first/last layer at ``first_last_bits``.

    Each layer's activation grid follows what feeds it (``act_quantizer_for``): unsigned after ReLU,
    signed after a linear bottleneck, and ``scheme`` after h-swish.
    """
    kinds = input_activations(model)
    policy = uniform_policy(model, check_bits(bits), bits, first_last_bits)
    return quantize_model(model, policy, weight_quantizer=lsq_weight_quantizer,
                          act_quantizer=lambda b, name, layer: act_quantizer_for(kinds[name], scheme, b))


def channel_moments(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and variance of ``y`` (N, C, H, W) or (N, C) over every axis but the channel."""
    dims = [d for d in range(y.dim()) if d != 1]
    return y.mean(dims), y.var(dims, unbiased=False) + EPS  # (C,), (C,)


def gaussian_kl(mu_p: torch.Tensor, var_p: torch.Tensor, mu_q: torch.Tensor, var_q: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu_p, var_p) || N(mu_q, var_q)) = 1/2 [log(var_q/var_p) + (var_p + (mu_p - mu_q)^2)/var_q - 1]``."""
    if bool((var_p <= 0).any()) or bool((var_q <= 0).any()):
        raise QuantParamError("variances must be positive in the Gaussian KL divergence")
    return 0.5 * (torch.log(var_q / var_p) + (var_p + (mu_p - mu_q) ** 2) / var_q - 1.0)


def aiwq(y_before: torch.Tensor, y_after: torch.Tensor) -> float:
    """AIWQ of one layer: the channel-mean Gaussian KL between its outputs before and after a weight update."""
    if y_before.shape != y_after.shape:
        raise QuantParamError(f"outputs before {tuple(y_before.shape)} and after {tuple(y_after.shape)} differ in shape")
    kl = gaussian_kl(*channel_moments(y_before), *channel_moments(y_after))  # (C,)
    return float(kl.clamp_min(0.0).mean())  # clamp: rounding can give -1e-9 for identical outputs


def _layer_output(layer: nn.Module, x_q: torch.Tensor, quantized: bool) -> torch.Tensor:
    """The layer's output on an already-quantized input, with quantized (or float) weights."""
    weight = layer.w_quantizer(layer.weight) if quantized else layer.weight
    if isinstance(layer, nn.Conv2d):
        return layer._conv_forward(x_q, weight, layer.bias)
    return F.linear(x_q, weight, layer.bias)


def quant_layers(qmodel: nn.Module) -> dict[str, nn.Module]:
    """The quantized conv/linear layers of ``qmodel`` by name."""
    return {n: m for n, m in qmodel.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))}


def aiwq_step(qmodel: nn.Module, images: torch.Tensor, labels: torch.Tensor, optimizer,
              layers: list[str] | None = None) -> tuple[float, dict[str, float], dict[str, float]]:
    """One training step that also measures, per layer, AIWQ with quantized weights and with float weights.

    Returns ``(loss, {name: AIWQ}, {name: same KL with the float weights})``. Frozen layers (no weight
    gradient) move nothing and are skipped; ``layers=[]`` trains without measuring. Batch norm keeps its
    current mode (call ``qmodel.train()`` first). The gradient's global norm is clipped to ``MAX_GRAD_NORM``,
    as in ``mpqlab.qat.fine_tune``.
    """
    all_layers = quant_layers(qmodel)
    names = [n for n in (all_layers if layers is None else layers) if all_layers[n].weight.requires_grad]
    inputs, hooks = {}, []
    for n in names:
        def keep(module, args, output, n=n):
            inputs[n] = output.detach()  # the quantized input the layer multiplied
        hooks.append(all_layers[n].a_quantizer.register_forward_hook(keep))
    try:
        loss = F.cross_entropy(qmodel(images), labels)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        before = {n: (_layer_output(all_layers[n], inputs[n], True), _layer_output(all_layers[n], inputs[n], False))
                  for n in names}
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(qmodel.parameters(), MAX_GRAD_NORM)
    optimizer.step()
    quantized, floating = {}, {}
    with torch.no_grad():
        for n in names:
            quantized[n] = aiwq(before[n][0], _layer_output(all_layers[n], inputs[n], True))
            floating[n] = aiwq(before[n][1], _layer_output(all_layers[n], inputs[n], False))
    return loss.item(), quantized, floating


def freeze_layers(qmodel: nn.Module, names: list[str]) -> None:
    """Stop training the weights (and weight quantizers) of ``names``; activations and batch norm still learn."""
    layers = quant_layers(qmodel)
    unknown = [n for n in names if n not in layers]
    if unknown:
        raise PolicyError(f"cannot freeze unknown layer(s) {unknown}; quantized layers are {list(layers)[:5]} ...")
    for n in names:
        for p in [layers[n].weight, *layers[n].w_quantizer.parameters()]:
            p.requires_grad_(False)
        if layers[n].bias is not None:
            layers[n].bias.requires_grad_(False)


def bn_only(qmodel: nn.Module) -> None:
    """Freeze every parameter except batch norm's scale and shift (PROFIT's last stage)."""
    for m in qmodel.modules():
        for p in m.parameters(recurse=False):
            p.requires_grad_(isinstance(m, nn.modules.batchnorm._BatchNorm))


def layers_to_freeze(scores: dict[str, float], frozen: list[str], fraction: float) -> list[str]:
    """The not-yet-frozen layers with the largest AIWQ, so that ``fraction`` of all scored layers end up frozen."""
    if not 0.0 <= fraction <= 1.0:
        raise QuantParamError(f"fraction must be in [0, 1], got {fraction}")
    target = round(fraction * len(scores)) - len(frozen)
    ranked = sorted((n for n in scores if n not in frozen), key=lambda n: -scores[n])
    return ranked[:max(target, 0)]


def bn_running_means(qmodel: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every batch norm's running mean, by name (for the fluctuation measure)."""
    return {n: m.running_mean.detach().clone() for n, m in qmodel.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def bn_fluctuation(history: list[dict[str, torch.Tensor]], qmodel: nn.Module) -> float:
    """How much BN running means wander over ``history`` (one snapshot per step), in units of the running std.

    ``mean over layers and channels of std_t(running_mean_t) / sqrt(running_var)``.
    """
    if len(history) < 2:
        raise QuantParamError(f"need at least 2 snapshots of the running means, got {len(history)}")
    bns = {n: m for n, m in qmodel.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    values = []
    for n, bn in bns.items():
        means = torch.stack([h[n] for h in history])  # (T, C)
        values.append((means.std(0) / bn.running_var.clamp_min(EPS).sqrt()).mean())
    return float(torch.stack(values).mean())
