"""Precompute notebook 04's sweep over seeds: MobileNetV1-small accuracy against the outlier ratio, without fine-tuning.

Every setting quantizes the shipped checkpoint's weights and input activations with
``mpqlab.quant.outlier.OutlierQuantizer`` at W{b}A{b} for b in ``bits`` and every outlier ratio in
``ratios`` (ratio 0 is plain linear quantization: the grid stretched to max|x|, per tensor). The first
conv and the classifier stay at ``first_last_bits`` with the same method and ratio. Weight thresholds come
from the weights themselves; activation thresholds are a running average (EMA) over the calibration
batches. For reference, the same bit-widths with the package's default linear quantizers (per-channel
weights, EMA min-max activations, notebook 01) are scored too. No weight is changed.

A seed picks the ``calib_images`` calibration images (``mpqlab.data.calibration_batch``); every setting is
calibrated with the same seeds, so the accuracies of one seed are paired and the notebook compares settings
within pairs (``mpqlab.stats``). Every setting is scored on the full test set (10,000 images; ``eval_images``
None), the float model once. Each row also keeps its correct predictions per 1,000 test images, so a live
rerun on the first few thousand images can be compared exactly with the file.

On one thread a setting costs about 20 s (calibration and scoring 10,000 images), so the 14 settings x 3 seeds
take about a quarter of an hour (the file records its own ``seconds`` and ``cpu_seconds``; README's table lists them).

    python -m mpqlab.experiments.outlier_ptq [--seeds 0 1 2] [--eval-images N] [--out PATH]

rewrites ``data/results/outlier_ptq.json`` after every finished setting (one thread; the file records the wall
``seconds`` and ``cpu_seconds``, added up over resumed sessions). A stopped run continues where it stopped if the
settings are the same; ``complete`` is true once every setting is in the file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mpqlab.checkpoint import load_pretrained
from mpqlab.data import calibration_batch, fashion_mnist_splits, repo_data_dir
from mpqlab.errors import UsageError, check_tensor
from mpqlab.experiments.cli import (ResumableResult, experiment_parser, parse_experiment_args, report_written,
                                    result_header)
from mpqlab.qat import subset_loader
from mpqlab.quant.outlier import OutlierQuantizer
from mpqlab.quant.policy import quantize_model, uniform_policy
from mpqlab.quant.ptq import calibrate
from mpqlab.train import evaluate

RESULTS = repo_data_dir() / "results" / "outlier_ptq.json"
LINEAR = "linear, per-channel (notebook 01)"  # the reference rows; their "ratio" is None
OUTLIER = "outlier-aware"
SCORE_BATCH = 1000  # test images per scoring batch: rows keep their correct predictions per batch


@dataclass
class Settings:
    model: str = "mobilenet_v1_small"  # shipped checkpoint, never changed
    bits: tuple = (4, 3)  # W{b}A{b} for every layer but the first and the last
    ratios: tuple = (0.0, 0.001, 0.005, 0.01, 0.02, 0.03)  # share of non-zero values kept in float
    first_last_bits: int = 8  # first conv and classifier: same method and ratio, 8 bits
    momentum: float = 0.1  # EMA of the activation thresholds over the calibration batches
    calib_images: int = 512  # training images, in batches of calib_batch, picked by the seed
    calib_batch: int = 128
    eval_images: int | None = None  # first N test images; None: all of them (10,000)
    seeds: tuple = (0, 1, 2)  # each seed: one set of calibration images, the same for every setting


def outlier_aware_model(model: nn.Module, bits: int, ratio: float, first_last_bits: int | None = 8,
                        momentum: float = 0.1) -> nn.Module:
    """A copy of ``model`` with outlier-aware weights and activations (signed weights; activations signed
    only if their first batch holds negative values, as the image entering the first conv does)."""

    def weights(b, name, layer):
        return OutlierQuantizer(b, ratio=ratio, signed=True)

    def acts(b, name, layer):
        return OutlierQuantizer(b, ratio=ratio, signed=None, momentum=momentum)

    return quantize_model(model, uniform_policy(model, bits, bits, first_last_bits),
                          weight_quantizer=weights, act_quantizer=acts)


@torch.no_grad()
def calibrate_thresholds(qmodel: nn.Module, images: torch.Tensor, batch_size: int = 128,
                         device: str = "cpu") -> nn.Module:
    """Run ``images`` through the model with only the activation quantizers in training mode, so their
    thresholds follow t <- (1 - momentum) t + momentum t_batch while batch norm keeps its statistics."""
    check_tensor(images, name="images")
    qmodel.eval().to(device)
    act_quantizers = [m for m in qmodel.modules() if isinstance(m, OutlierQuantizer) and m.momentum is not None]
    for q in act_quantizers:
        q.train()
    for start in range(0, len(images), batch_size):
        qmodel(images[start:start + batch_size].to(device))  # (B, C, H, W)
    return qmodel.eval()


def outlier_share(qmodel: nn.Module) -> float:
    """Outliers over all values, summed over every OutlierQuantizer's last call."""
    qs = [m for m in qmodel.modules() if isinstance(m, OutlierQuantizer)]
    return sum(q.n_outliers for q in qs) / max(1, sum(q.numel for q in qs))


@torch.no_grad()
def correct_per_batch(model: nn.Module, loader, device: str = "cpu") -> list[int]:
    """Correct top-1 predictions in each batch of ``loader``: their sum over the images is the accuracy
    ``mpqlab.train.evaluate`` gives, and a prefix of the list scores the first batches alone."""
    model.eval().to(device)
    return [int((model(images.to(device)).argmax(1) == labels.to(device)).sum()) for images, labels in loader]


def setting_model(model: nn.Module, bits: int, ratio: float | None, images: torch.Tensor, settings: Settings,
                  device: str = "cpu") -> nn.Module:
    """The calibrated copy of ``model`` for one setting: ``ratio`` None is the per-channel linear reference."""
    if ratio is None:
        qmodel = quantize_model(model, uniform_policy(model, bits, bits, settings.first_last_bits))
        return calibrate(qmodel, images, batch_size=settings.calib_batch, device=device)
    qmodel = outlier_aware_model(model, bits, ratio, settings.first_last_bits, settings.momentum)
    return calibrate_thresholds(qmodel, images, settings.calib_batch, device)


def planned_runs(settings: Settings) -> list[tuple[int, int, float | None]]:
    """Every (seed, bits, ratio), seed by seed (ratio None: the linear reference, first at each width), so a
    stopped precompute leaves whole seeds behind it."""
    return [(seed, bits, ratio) for seed in settings.seeds for bits in settings.bits
            for ratio in (None, *settings.ratios)]


def run(settings: Settings, splits=None, device: str = "cpu", out: Path | None = RESULTS) -> dict:
    """Score every setting for every seed; ``out`` (unless None) is rewritten atomically after each one.

    Settings already in ``out`` from the same ``settings`` are kept, so a stopped precompute continues.
    """
    splits = splits or fashion_mnist_splits()
    n_test = len(splits.test)
    if settings.eval_images is not None and not 0 < settings.eval_images <= n_test:
        raise UsageError(f"eval_images must be None (all {n_test} test images) or 1..{n_test}, "
                         f"got {settings.eval_images}")
    model = load_pretrained(settings.model, device)
    scorer = subset_loader(splits.test, settings.eval_images or n_test, batch_size=SCORE_BATCH)
    progress = ResumableResult(settings, out, result_header("outlier_ptq", settings, test_images=len(scorer.dataset),
                                                            score_batch=SCORE_BATCH))
    result = progress.result
    progress.keep("float_accuracy", lambda: evaluate(model, scorer, device))
    done = {(r["seed"], r["bits"], r["ratio"]) for r in result["runs"]}
    calib = {}  # seed -> calibration images, drawn once per seed
    for seed, bits, ratio in progress.remaining(planned_runs(settings), done):
        start = time.perf_counter()
        if seed not in calib:
            calib[seed] = calibration_batch(splits, settings.calib_images, seed)[0]
        qmodel = setting_model(model, bits, ratio, calib[seed], settings, device)
        correct = correct_per_batch(qmodel, scorer, device)
        row = {"method": LINEAR if ratio is None else OUTLIER, "bits": bits, "ratio": ratio, "seed": seed,
               "accuracy": sum(correct) / len(scorer.dataset), "correct_per_batch": correct,
               "outlier_share": 0.0 if ratio is None else outlier_share(qmodel),
               "seconds": time.perf_counter() - start}
        result["runs"].append(row)
        progress.save()
        name = "linear per-channel" if ratio is None else f"{100 * ratio:.1f}% outliers"
        print(f"seed {seed} W{bits}A{bits}, {name}: {row['accuracy']:.4f} ({row['seconds']:.0f} s)", flush=True)
    return progress.finish()


def main(argv=None) -> None:
    parser = experiment_parser(__doc__, RESULTS)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(Settings.seeds),
                        help="seeds (calibration images), the same for every setting")
    parser.add_argument("--eval-images", type=int, default=Settings.eval_images,
                        help="first N test images scored (default: all of them)")
    args = parse_experiment_args(parser, argv)
    result = run(Settings(seeds=tuple(args.seeds), eval_images=args.eval_images), out=args.out)
    report_written(args.out, result)


if __name__ == "__main__":
    main()
