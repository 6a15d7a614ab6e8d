"""Precompute notebook 04's sweep: MobileNetV1-small accuracy against the outlier ratio, without fine-tuning.

Every setting quantizes the shipped checkpoint's weights and input activations with
``mpqlab.quant.outlier.OutlierQuantizer`` at W{b}A{b} for b in ``bits`` and every outlier ratio in
``ratios`` (ratio 0 is plain linear quantization: the grid stretched to max|x|, per tensor). The first
conv and the classifier stay at ``first_last_bits`` with the same method and ratio. Weight thresholds come
from the weights themselves; activation thresholds are a running average (EMA) over the calibration
batches. For reference, the same bit-widths with the package's default linear quantizers (per-channel
weights, EMA min-max activations, notebook 01) are scored too. No weight is changed.

    python -m mpqlab.experiments.outlier_ptq [--eval-images 2000] [--out PATH]

rewrites ``data/results/outlier_ptq.json`` (one thread; the file records the seconds it took).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from mpqlab.checkpoint import load_pretrained
from mpqlab.data import calibration_batch, fashion_mnist_splits, repo_data_dir
from mpqlab.errors import check_tensor
from mpqlab.experiments.cli import experiment_parser, finish_result, parse_experiment_args, report_written
from mpqlab.qat import subset_loader
from mpqlab.quant.outlier import OutlierQuantizer
from mpqlab.quant.policy import quantize_model, uniform_policy
from mpqlab.quant.ptq import calibrate
from mpqlab.train import evaluate

RESULTS = repo_data_dir() / "results" / "outlier_ptq.json"


@dataclass
class Settings:
    model: str = "mobilenet_v1_small"  # shipped checkpoint, never changed
    bits: tuple = (4, 3)  # W{b}A{b} for every layer but the first and the last
    ratios: tuple = (0.0, 0.001, 0.005, 0.01, 0.02, 0.03)  # share of non-zero values kept in float
    first_last_bits: int = 8  # first conv and classifier: same method and ratio, 8 bits
    momentum: float = 0.1  # EMA of the activation thresholds over the calibration batches
    calib_images: int = 512  # training images, in batches of calib_batch
    calib_batch: int = 128
    eval_images: int = 2000  # first N test images
    seed: int = 0


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


def run(settings: Settings, splits=None, device: str = "cpu", out: Path | None = RESULTS) -> dict:
    """Score every setting; writes the JSON to ``out`` atomically (unless None) and returns it."""
    start = time.perf_counter()
    splits = splits or fashion_mnist_splits()
    model = load_pretrained(settings.model, device)
    scorer = subset_loader(splits.test, settings.eval_images)
    images, _ = calibration_batch(splits, settings.calib_images, settings.seed)
    result = {"script": "python -m mpqlab.experiments.outlier_ptq", "seed": settings.seed,
              "settings": asdict(settings), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "float_accuracy": evaluate(model, scorer, device), "runs": []}
    for bits in settings.bits:
        linear = calibrate(quantize_model(model, uniform_policy(model, bits, bits, settings.first_last_bits)),
                           images, batch_size=settings.calib_batch, device=device)
        result["runs"].append({"method": "linear, per-channel (notebook 01)", "bits": bits, "ratio": None,
                               "accuracy": evaluate(linear, scorer, device), "outlier_share": 0.0})
        for ratio in settings.ratios:
            qmodel = outlier_aware_model(model, bits, ratio, settings.first_last_bits, settings.momentum)
            calibrate_thresholds(qmodel, images, settings.calib_batch, device)
            row = {"method": "outlier-aware", "bits": bits, "ratio": ratio,
                   "accuracy": evaluate(qmodel, scorer, device), "outlier_share": outlier_share(qmodel)}
            result["runs"].append(row)
            print(f"W{bits}A{bits}, {100 * ratio:.1f}% outliers: {row['accuracy']:.3f}", flush=True)
    return finish_result(result, start, out)


def main(argv=None) -> None:
    parser = experiment_parser(__doc__, RESULTS)
    parser.add_argument("--eval-images", type=int, default=Settings.eval_images, help="test images scored")
    args = parse_experiment_args(parser, argv)
    result = run(Settings(eval_images=args.eval_images), out=args.out)
    report_written(args.out, result)


if __name__ == "__main__":
    main()
