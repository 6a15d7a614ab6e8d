"""Single-layer quantization runs: how sensitive is one layer, and what step size does LSQ learn for it?

LIMPQ (Tang et al., ECCV 2022, Sec. 3.3, Figures 1 and 2) argues that the learned LSQ step size
``s`` of a layer measures its importance: with a larger step, each quantization level absorbs a
wider interval of real values, so more of the layer's distinct values collapse onto one level and
the layer needs more bits. Their check: quantize *one* depthwise or pointwise conv of MobileNetV1
at a time (everything else in full precision) and plot the learned scale factor against the
accuracy lost.

Here, the pure pieces of that study (the fine-tuning loop lives in
``mpqlab.experiments.dw_pw_sensitivity``):

- ``quantize_single_layer``: LSQ on one layer's weights (signed) and input activations (unsigned);
- ``layer_steps``: read that layer's two learned steps ``s_w`` and ``s_a``;
- ``values_per_level``: Figure 1, the distinct real values mapped onto each level;
- ``normalised_degradation``: ``d_i = acc_ref - acc_i`` divided by ``max_j d_j``;
- ``linear_fit``: least-squares ``y = slope * x + intercept`` per layer type (Figure 2's lines);
- over seeds (``mpqlab.stats`` intervals): ``accuracy_drops`` and ``drop_by_layer`` against each seed's
  control run, ``extra_losses`` and ``dw_minus_pw_extra_loss(_by_pair)`` for the claim "depthwise convs
  lose more from 4 to 2 bits", ``step_ratio_summary`` for how far the fine-tune moved the steps.

Introduced in notebook 09 (depthwise / pointwise sensitivity).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mpqlab.errors import PolicyError, TensorValueError, check_bits, check_positive
from mpqlab.quant.lsq import LSQQuantizer, lsq_range
from mpqlab.quant.policy import quantizable_layers, quantize_model
from mpqlab.stats import Interval, mean_interval, paired_difference


def quantize_single_layer(model: nn.Module, layer_name: str, bits: int) -> nn.Module:
    """A copy of ``model`` with only ``layer_name`` quantized by LSQ at ``bits`` (weights and input activations).

    The weight quantizer is signed (``q_min = -2^(b-1)``), the activation quantizer unsigned
    (``q_min = 0``): every layer but the first reads a post-ReLU input. The first layer reads the
    normalised image (negative values too), so it is refused here.
    """
    bits = check_bits(bits, low=2)
    names = quantizable_layers(model)
    if layer_name not in names:
        raise PolicyError(f"unknown layer {layer_name!r}; the model's conv/linear layers are: {', '.join(names[:6])}, ...")
    if layer_name == names[0]:
        raise PolicyError(f"{layer_name!r} is the first layer: its input (the image) is signed, but this study "
                          f"quantizes post-ReLU inputs; pick one of {', '.join(names[1:4])}, ...")
    return quantize_model(model, {layer_name: (bits, bits)},
                          weight_quantizer=lambda b, name, layer: LSQQuantizer(b, "weight"),
                          act_quantizer=lambda b, name, layer: LSQQuantizer(b, "act"))


@torch.no_grad()
def initialize_steps(model: nn.Module, images: torch.Tensor) -> None:
    """One forward pass in eval mode, so every LSQ step takes its initial value ``2 mean|x| / sqrt(Q_P)`` from ``images``."""
    was_training = model.training
    model.eval()
    model(images)
    model.train(was_training)


def layer_steps(model: nn.Module, layer_name: str) -> dict[str, float]:
    """``{"w_step": s_w, "a_step": s_a}`` of a layer made by ``quantize_single_layer``."""
    layer = model.get_submodule(layer_name)
    w_q, a_q = getattr(layer, "w_quantizer", None), getattr(layer, "a_quantizer", None)
    if not (isinstance(w_q, LSQQuantizer) and isinstance(a_q, LSQQuantizer)):
        raise PolicyError(f"layer {layer_name!r} has no LSQ quantizers; build the model with quantize_single_layer")
    return {"w_step": float(w_q.step.detach()), "a_step": float(a_q.step.detach())}


def values_per_level(x: torch.Tensor, scale: float, bits: int, signed: bool = True) -> dict[int, int]:
    """How many distinct real values of ``x`` land on each level ``q = round(clip(x / s, q_min, q_max))``.

    Returns ``{q: count}`` for every level from ``q_min`` to ``q_max`` (0 where no value lands).
    The paper's Figure 1: for two tensors of equal size, the one with the larger step ``s`` maps
    more distinct values onto each level it uses.

    >>> values_per_level(torch.tensor([0.1, 0.2, 0.2, 0.9]), 0.5, 2, signed=False)
    {0: 2, 1: 0, 2: 1, 3: 0}
    """
    scale = check_positive(scale, name="scale")
    bits = check_bits(bits, low=2 if signed else 1)
    if x.numel() == 0:
        raise TensorValueError("values_per_level got an empty tensor: there is nothing to count")
    q_min, q_max = lsq_range(bits, signed)
    values = torch.unique(x.detach().flatten())  # distinct real values
    levels = torch.clamp(torch.round(values / scale), q_min, q_max).long()
    counts = torch.bincount(levels - q_min, minlength=q_max - q_min + 1)
    return {q_min + i: int(c) for i, c in enumerate(counts.tolist())}


def normalised_degradation(acc_ref: float, accs) -> np.ndarray:
    """``d_i / max_j d_j`` with ``d_i = acc_ref - acc_i``: 1 for the run that lost most, <= 0 where nothing was lost.

    ``acc_ref`` is the accuracy of the reference (full-precision) model, ``accs`` those of the runs.
    """
    d = float(acc_ref) - np.asarray(accs, dtype=float)
    if d.size == 0 or not np.isfinite(d).all():
        raise TensorValueError(f"need a non-empty list of finite accuracies, got {list(np.asarray(accs))}")
    if d.max() <= 0:
        raise TensorValueError(f"no run is below the reference accuracy {acc_ref}: there is no degradation to normalise")
    return d / d.max()


def linear_fit(x, y) -> tuple[float, float]:
    """Least-squares line ``y = slope * x + intercept``: ``slope = cov(x, y) / var(x)``."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.size < 2 or np.ptp(x) == 0:
        raise TensorValueError(f"a line needs >= 2 points with distinct x; got x={x.tolist()}, y={y.tolist()}")
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    return slope, float(y.mean() - slope * x.mean())


# Statistics over seeds, from the result dict of ``mpqlab.experiments.dw_pw_sensitivity``
# (``{"controls": [{"seed", "accuracy", ...}], "runs": [{"layer", "pair", "kind", "bits", "seed", "accuracy", ...}]}``).
# Accuracies there are fractions; the drops and losses below are in percentage points.


def control_accuracy_by_seed(result: dict) -> dict[int, float]:
    """``{seed: accuracy of that seed's control run}`` (the float model after the same fine-tune)."""
    return {int(c["seed"]): float(c["accuracy"]) for c in result["controls"]}


def accuracy_drops(result: dict) -> list[dict]:
    """Every run row plus ``drop = 100 (acc_control(seed) - acc)``: points lost against the same seed's control."""
    controls = control_accuracy_by_seed(result)
    missing = sorted({r["seed"] for r in result["runs"]} - set(controls))
    if missing:
        raise TensorValueError(f"no control run for seed(s) {missing}; controls exist for {sorted(controls)}")
    return [{**r, "drop": 100 * (controls[r["seed"]] - r["accuracy"])} for r in result["runs"]]


def drop_by_layer(result: dict, level: float = 0.95) -> list[dict]:
    """Per (layer, bits): mean +- sd over seeds of the accuracy drop in points, with its ``level`` interval.

    One row per (layer, bits) in the order the runs were made: ``layer, pair, kind, bits, n, mean, sd, low, high``.
    Needs at least 2 seeds per (layer, bits).
    """
    groups: dict[tuple, list[dict]] = {}
    for r in accuracy_drops(result):
        groups.setdefault((r["layer"], r["bits"]), []).append(r)
    rows = []
    for (layer, bits), runs in groups.items():
        interval = mean_interval([r["drop"] for r in runs], level)
        rows.append({"layer": layer, "pair": runs[0]["pair"], "kind": runs[0]["kind"], "bits": bits, "n": interval.n,
                     "mean": interval.mean, "sd": interval.sd, "low": interval.low, "high": interval.high})
    return rows


def extra_losses(result: dict, high_bits: int = 4, low_bits: int = 2) -> list[dict]:
    """Per (pair, seed): ``extra = 100 (acc(high_bits) - acc(low_bits))`` of the depthwise and of the pointwise conv.

    The points a conv loses when its bits drop from ``high_bits`` to ``low_bits`` (LIMPQ, Sec. 3.3: depthwise
    convs are said to lose more). Rows ``{"pair", "seed", "depthwise", "pointwise"}``, sorted by pair then seed.
    The control cancels out, so it is not needed here.
    """
    acc = {(r["pair"], r["seed"], r["kind"], r["bits"]): r["accuracy"] for r in result["runs"]}
    rows = []
    for pair, seed in sorted({(p, s) for p, s, _, _ in acc}):
        row = {"pair": pair, "seed": seed}
        for kind in ("depthwise", "pointwise"):
            keys = [(pair, seed, kind, bits) for bits in (high_bits, low_bits)]
            absent = [k for k in keys if k not in acc]
            if absent:
                raise TensorValueError(f"pair {pair}, seed {seed}: no {kind} run at {absent[0][3]} bits, "
                                       f"so its {high_bits} -> {low_bits} bit loss is unknown")
            row[kind] = 100 * (acc[keys[0]] - acc[keys[1]])
        rows.append(row)
    return rows


def dw_minus_pw_extra_loss(result: dict, high_bits: int = 4, low_bits: int = 2, level: float = 0.95) -> Interval:
    """Paired interval of ``extra(depthwise) - extra(pointwise)`` in points over every (pair, seed).

    > 0 and detectable: depthwise convs lose more accuracy from ``high_bits`` to ``low_bits`` than pointwise ones.
    """
    rows = extra_losses(result, high_bits, low_bits)
    return paired_difference([r["depthwise"] for r in rows], [r["pointwise"] for r in rows], level)


def dw_minus_pw_extra_loss_by_pair(result: dict, high_bits: int = 4, low_bits: int = 2,
                                   level: float = 0.95) -> dict[int, Interval]:
    """``{pair: paired interval of extra(depthwise) - extra(pointwise) over seeds}`` (needs >= 2 seeds)."""
    by_pair: dict[int, list[dict]] = {}
    for r in extra_losses(result, high_bits, low_bits):
        by_pair.setdefault(r["pair"], []).append(r)
    return {pair: paired_difference([r["depthwise"] for r in rows], [r["pointwise"] for r in rows], level)
            for pair, rows in by_pair.items()}


def step_ratio_summary(result: dict) -> dict[str, float]:
    """``{"w_step": max |s_w / s_w_init - 1|, "a_step": max |s_a / s_a_init - 1|}`` over all runs.

    How far the fine-tune moved LSQ's steps from their initial values ``2 mean|x| / sqrt(Q_P)``:
    if barely at all, the "learned" steps mostly restate the initialisation.
    """
    runs = result["runs"]
    if not runs:
        raise TensorValueError("the result has no runs: there are no step ratios to summarise")
    return {step: max(abs(r[step] / r[f"{step}_init"] - 1) for r in runs) for step in ("w_step", "a_step")}
