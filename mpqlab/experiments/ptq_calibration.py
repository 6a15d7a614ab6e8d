"""Precompute notebook 01's post-training quantization grid: calibration method x bit-width x seed on the test set.

The shipped MobileNetV1-small is quantized at W{b}A{b} for b in 8, 6, 4 (first conv and last linear
layer held at 8 bits, as in most papers), with weights per output channel, symmetric, min-max, and
input activations per tensor, asymmetric, calibrated on ``calibration_images`` training images by each
method (min-max, percentile, MSE, KL). No retraining. Accuracy is on the full 10,000-image test set.
Each point is ``mpqlab.quant.ptq.ptq_accuracy``, the step of ``ptq_table``. Extra rows repeat the methods of
``input_minmax`` with the network's input (the image, first conv) calibrated by min-max instead: notebook 01
shows why KL calibration fails on that tensor.

A seed picks the calibration images (``mpqlab.data.calibration_batch``); weights are quantized by min-max,
the same for every seed. Every method runs with the same seeds, so the accuracies of one seed are paired
(``seed_accuracies``, ``mpqlab.stats.paired_difference``). The float model sees no calibration image: its
row is computed once (``"seed": None``).

    python -m mpqlab.experiments.ptq_calibration [--seeds 0 1 2] [--eval-images 10000] [--out PATH]

rewrites ``data/results/ptq_calibration.json`` after every finished point (one thread; the file records the
wall ``seconds`` and ``cpu_seconds``, added up over resumed sessions). A stopped run continues where it
stopped if the settings are the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from torch.utils.data import TensorDataset

from mpqlab.checkpoint import load_pretrained
from mpqlab.data import Splits, calibration_batch, fashion_mnist_splits, make_loaders, repo_data_dir
from mpqlab.experiments.cli import (ResumableResult, experiment_parser, parse_experiment_args, report_written,
                                    result_header)
from mpqlab.quant.policy import quantizable_layers
from mpqlab.quant.ptq import act_quantizer_factory, ptq_accuracy
from mpqlab.stats import seed_values
from mpqlab.train import evaluate

RESULTS = repo_data_dir() / "results" / "ptq_calibration.json"
INPUT_MINMAX = " (input: minmax)"  # suffix of the method name of the extra rows


@dataclass
class Settings:
    model: str = "mobilenet_v1_small"  # shipped checkpoint
    bits: tuple = (8, 6, 4)  # W{b}A{b} for every layer except the first and last
    methods: tuple = ("minmax", "percentile", "mse", "kl")  # activation calibration (mpqlab.quant.ptq)
    first_last_bits: int | None = 8  # first conv and last linear layer; None = like the rest
    input_minmax: tuple = ("kl",)  # also run these methods with min-max on the network input only
    calibration_images: int = 512  # training images seen by the observers
    eval_images: int | None = None  # first N test images; None = all 10,000
    seeds: tuple = (0, 1, 2)  # each seed picks its calibration images, the same for every method


def cut_test_set(splits: Splits, eval_images: int | None) -> Splits:
    """The same splits with the test set cut to its first ``eval_images`` images (None: unchanged)."""
    if eval_images is None:
        return splits
    x, y = splits.test.tensors
    return Splits(splits.train, splits.val, TensorDataset(x[:eval_images], y[:eval_images]))


def input_minmax_factory(method: str, input_layer: str):
    """Activation factory: ``method`` for every layer except ``input_layer``, whose input gets min-max."""
    chosen, minmax = act_quantizer_factory(method), act_quantizer_factory("minmax")

    def factory(bits, name, layer):
        return (minmax if name == input_layer else chosen)(bits, name, layer)

    return factory


def planned_points(settings: Settings) -> list[tuple[str, int, int]]:
    """Every (method, bits, seed), seed by seed, so a stopped precompute leaves whole seeds behind it."""
    methods = list(settings.methods) + [m + INPUT_MINMAX for m in settings.input_minmax]
    return [(method, bits, seed) for seed in settings.seeds for method in methods for bits in settings.bits]


def act_factory(model, method: str):
    """The activation quantizer factory of a row's ``method`` (``"kl (input: minmax)"`` included)."""
    if method.endswith(INPUT_MINMAX):
        return input_minmax_factory(method.removesuffix(INPUT_MINMAX), quantizable_layers(model)[0])
    return act_quantizer_factory(method)


def run(settings: Settings, splits=None, device: str = "cpu", out: Path | None = RESULTS) -> dict:
    """The float row and every (method, bits, seed) row; ``out`` (unless None) is rewritten after each point.

    Points already in ``out`` from the same settings are kept, so a stopped precompute continues.
    """
    planned = planned_points(settings)
    for method in dict.fromkeys(m for m, _, _ in planned):  # refuse a typo before any evaluation
        act_quantizer_factory(method.removesuffix(INPUT_MINMAX))
    splits = cut_test_set(splits or fashion_mnist_splits(), settings.eval_images)
    model = load_pretrained(settings.model, device)
    test_loader = make_loaders(splits, seed=0)["test"]  # not shuffled: the seed changes nothing here
    progress = ResumableResult(settings, out, result_header("ptq_calibration", settings,
                                                            test_images=len(splits.test)), lists=("rows",))
    rows = progress.result["rows"]
    if not any(r["method"] == "float" for r in rows):
        rows.insert(0, {"method": "float", "w_bits": 32, "a_bits": 32, "seed": None,
                        "accuracy": evaluate(model, test_loader, device)})
        progress.save()
    images = {}
    for method, bits, seed in progress.remaining(planned, {(r["method"], r["w_bits"], r["seed"]) for r in rows}):
        if seed not in images:
            images[seed] = calibration_batch(splits, n=settings.calibration_images, seed=seed)[0]
        accuracy = ptq_accuracy(model, bits, act_factory(model, method), images[seed], test_loader,
                                settings.first_last_bits, device)
        rows.append({"method": method, "w_bits": bits, "a_bits": bits, "seed": seed, "accuracy": accuracy})
        progress.save()
        print(f"seed {seed} {method:>18s} W{bits}A{bits}: {accuracy:.4f}", flush=True)
    return progress.finish()


def seed_accuracies(result: dict, method: str, bits: int) -> list[float]:
    """Accuracy of ``method`` at W{bits}A{bits} for each seed of ``result``, in the order of ``result["seeds"]``
    (``mpqlab.stats.seed_values``: paired across methods, gaps refused)."""
    return [float(v) for v in seed_values(result["rows"], "accuracy", result["seeds"], method=method, w_bits=bits)]


def summary(result: dict) -> pd.DataFrame:
    """Mean and sample sd over the seeds, in %, one row per (method, W{b}A{b}), in the file's order."""
    rows = [r for r in result["rows"] if r["method"] != "float"]
    methods, bits = list(dict.fromkeys(r["method"] for r in rows)), result["settings"]["bits"]
    records = []
    for method in methods:
        for b in bits:
            acc = 100 * pd.Series(seed_accuracies(result, method, b))
            records.append({"method": method, "bits": f"W{b}A{b}", "mean": acc.mean(), "sd": acc.std(ddof=1)})
    return pd.DataFrame(records)


def main(argv=None) -> None:
    parser = experiment_parser(__doc__, RESULTS)
    parser.add_argument("--eval-images", type=int, default=None, help="first N test images (default: all)")
    parser.add_argument("--calibration-images", type=int, default=Settings.calibration_images)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(Settings.seeds),
                        help="seeds (calibration images), the same for every method")
    args = parse_experiment_args(parser, argv)
    settings = Settings(eval_images=args.eval_images, calibration_images=args.calibration_images,
                        seeds=tuple(args.seeds))
    result = run(settings, out=args.out)
    report_written(args.out, result)


if __name__ == "__main__":
    main()
