"""Precompute notebook 02's accuracy table: linear and logarithmic grids at 3-5 bits, without retraining.

The shipped MobileNetV1-small is quantized at W{b}A{b}, b in ``bits``, with every conv layer between the first
and the last on one of four grids (``METHODS``): the workbook's linear quantizers (restricted-range
per-channel weights, min-max activations), the same with the full signed weight range, and LogQuant in base 2
and base sqrt(2) (Miyashita et al. 2016; one ``fsr`` per layer). The first conv and the classifier keep 8-bit
uniform quantizers in every row. Each seed picks another set of ``calibration_images`` training images (the
only random choice of post-training quantization), so the seeds of two methods are paired. Also: the log2
model at 4 bits with only its weights or only its activations quantized. Every network is scored on the full
10,000-image test set.

    python -m mpqlab.experiments.log_ptq [--out PATH]

rewrites ``data/results/log_ptq.json`` after every network (a stopped run continues where it stopped); the
file records its wall and CPU seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mpqlab.checkpoint import load_pretrained
from mpqlab.data import Splits, calibration_batch, fashion_mnist_splits, repo_data_dir
from mpqlab.errors import UsageError
from mpqlab.experiments.cli import (ResumableResult, experiment_parser, parse_experiment_args, report_written,
                                    result_header)
from mpqlab.qat import subset_loader
from mpqlab.quant.log import LogQuantizer
from mpqlab.quant.policy import quantizable_layers, quantize_model, uniform_policy
from mpqlab.quant.ptq import calibrate
from mpqlab.quant.uniform import default_act_quantizer, default_weight_quantizer, full_range_weight_quantizer
from mpqlab.train import evaluate

RESULTS = repo_data_dir() / "results" / "log_ptq.json"
METHODS = ("linear", "linear (full range)", "log2", "log sqrt(2)")
LOG_BASES = {"log2": "2", "log sqrt(2)": "sqrt2"}
SIDES = ("weights", "activations")


@dataclass
class Settings:
    model: str = "mobilenet_v1_small"  # shipped checkpoint, never changed
    bits: tuple = (5, 4, 3)  # W{b}A{b} for every conv layer but the first
    methods: tuple = METHODS
    one_side_bits: int = 4  # log2 with only the weights, or only the activations, quantized
    first_last_bits: int = 8  # first conv and classifier: uniform, in every row
    calibration_images: int = 256  # training images, one batch; the seed picks them
    eval_images: int | None = None  # first N test images; None = all 10,000
    seeds: tuple = (0, 1, 2)


def log_factories(base: str, keep_uniform: set[str]):
    """Weight and activation factories: LogQuant (one ``fsr`` per layer) except for the layers in
    ``keep_uniform``, which get the workbook's uniform quantizers."""

    def weights(bits, name, layer):
        return default_weight_quantizer(bits, name, layer) if name in keep_uniform else LogQuantizer(bits, True, base)

    def acts(bits, name, layer):
        if name in keep_uniform:
            return default_act_quantizer(bits, name, layer)
        return LogQuantizer(bits, None, base, momentum=0.1)

    return weights, acts


def quantized(model: nn.Module, method: str, bits: int, images: torch.Tensor, first_last_bits: int = 8,
              side: str | None = None, device: str = "cpu") -> nn.Module:
    """A calibrated copy of ``model`` with its middle layers on ``method``'s grid at W{bits}A{bits}.

    ``side="weights"`` (or ``"activations"``) quantizes only that side of the middle layers; the other stays float.
    One eval-mode pass over ``images`` sets every activation range and every log ``fsr``.
    """
    if method not in METHODS:
        raise UsageError(f"method must be one of {METHODS}, got {method!r}")
    if side not in (None, *SIDES):
        raise UsageError(f"side must be None, 'weights' or 'activations', got {side!r}")
    names = quantizable_layers(model)
    first_last = {names[0], names[-1]}
    policy = uniform_policy(model, bits, bits, first_last_bits=first_last_bits)
    if side is not None:
        policy = {name: wa if name in first_last else ((bits, None) if side == "weights" else (None, bits))
                  for name, wa in policy.items()}
    if method.startswith("linear"):
        weights = full_range_weight_quantizer if method == "linear (full range)" else default_weight_quantizer
        acts = default_act_quantizer
    else:
        weights, acts = log_factories(LOG_BASES[method], first_last)
    qmodel = quantize_model(model, policy, weight_quantizer=weights, act_quantizer=acts)
    return calibrate(qmodel, images, batch_size=len(images), device=device)


def planned(settings: Settings) -> list[tuple]:
    """Every (seed, method, bits, side) network, seed by seed, so a stopped run has whole seeds first."""
    return ([(seed, method, bits, None) for seed in settings.seeds for method in settings.methods
             for bits in settings.bits]
            + [(seed, "log2", settings.one_side_bits, side) for seed in settings.seeds for side in SIDES])


def run(settings: Settings, splits: Splits | None = None, device: str = "cpu", out: Path | None = RESULTS) -> dict:
    """Score every planned network; rewrites ``out`` after each one and returns the result."""
    from tqdm.auto import tqdm

    splits = splits or fashion_mnist_splits()
    model = load_pretrained(settings.model, device)
    scorer = subset_loader(splits.test, settings.eval_images, batch_size=500)
    progress = ResumableResult(settings, out, result_header("log_ptq", settings, test_images=len(scorer.dataset)))
    result = progress.result
    progress.keep("float_accuracy", lambda: evaluate(model, scorer, device))
    done = {(r["seed"], r["method"], r["bits"], r["side"]) for r in result["runs"]}
    for seed, method, bits, side in tqdm(progress.remaining(planned(settings), done), desc="networks"):
        images, _ = calibration_batch(splits, n=settings.calibration_images, seed=seed)
        qmodel = quantized(model, method, bits, images, settings.first_last_bits, side, device)
        result["runs"].append({"seed": seed, "method": method, "bits": bits, "side": side,
                               "accuracy": evaluate(qmodel, scorer, device)})
        progress.save()
    return progress.finish()


def main(argv=None) -> None:
    parser = experiment_parser(__doc__, RESULTS)
    parser.add_argument("--eval-images", type=int, default=None, help="first N test images (default: all)")
    args = parse_experiment_args(parser, argv)
    result = run(Settings(eval_images=args.eval_images), out=args.out)
    report_written(args.out, result)


if __name__ == "__main__":
    main()
