"""Precompute notebook 05's precision-highway table: ResNet-20 with low-bit residual branches, skips at
b bits (everything quantized), 8 bits or full precision, before and after a short fine-tune.

Every run starts from the shipped ResNet-20 checkpoint. ``mpqlab.highway.highway_resnet`` quantizes
every branch conv at W{b}A{b} (stem conv and classifier at 8 bits) and puts a skip quantizer on every
block input; static activation ranges are calibrated on 256 training images. ``mpqlab.qat.fine_tune``
then re-estimates batch norm on the quantized network, scores it (``start_accuracy``), runs ``steps``
SGD steps of ``batch_size`` images on the same seeded batches for every run, and scores it again. That is a
very short fine-tune (40 steps of 32 images: 1280 images, under 3% of one epoch): ResNet-20 costs about
ten times more than MobileNetV1-small per step, and the machine is shared.

    python -m mpqlab.experiments.precision_highway [--steps 40] [--out PATH]

rewrites ``data/results/precision_highway.json`` (one thread; the file records the seconds it took).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mpqlab.checkpoint import load_pretrained
from mpqlab.data import calibration_batch, fashion_mnist_splits, repo_data_dir
from mpqlab.experiments.cli import experiment_parser, finish_result, parse_experiment_args, report_written
from mpqlab.highway import highway_resnet
from mpqlab.qat import fine_tune, subset_loader
from mpqlab.quant.ptq import calibrate
from mpqlab.train import evaluate

RESULTS = repo_data_dir() / "results" / "precision_highway.json"
SKIPS = {"quantized": "skip at b bits (everything quantized)", "8": "8-bit highway", "float": "float highway"}


@dataclass
class Settings:
    model: str = "resnet20"  # shipped checkpoint every run starts from
    bits: tuple = (3, 2)  # W{b}A{b} in every residual branch
    skips: tuple = ("quantized", "8", "float")  # skip path: b bits, 8 bits, full precision
    first_last_bits: int = 8  # stem conv and classifier
    calib_images: int = 256  # training images that set the static activation ranges
    steps: int = 40  # SGD steps of batch_size images (an epoch is 1718 such steps)
    lr: float = 0.01  # SGD, momentum 0.9, cosine decay to 0, no weight decay
    batch_size: int = 32
    eval_images: int = 1000  # first N test images, scored before and after fine-tuning
    curve_images: int = 200  # first N validation images, scored every `steps` steps (once)
    seed: int = 0


def skip_bits_of(skip: str, bits: int) -> int | None:
    """The skip quantizer's bit-width for a skip setting: 'quantized' -> bits, '8' -> 8, 'float' -> None."""
    return {"quantized": bits, "8": 8, "float": None}[skip]


def build(fp_model, bits: int, skip: str, settings: Settings, splits, device: str = "cpu"):
    """The calibrated quantized copy of ``fp_model`` for one (bits, skip) setting."""
    qmodel = highway_resnet(fp_model, bits, skip_bits_of(skip, bits), settings.first_last_bits)
    images, _ = calibration_batch(splits, settings.calib_images, settings.seed)
    return calibrate(qmodel, images, device=device)


def one_run(fp_model, bits: int, skip: str, settings: Settings, splits, device: str = "cpu",
            steps: int | None = None) -> dict:
    """Build, calibrate, fine-tune (``steps`` overrides the settings) and score one setting."""
    qmodel = build(fp_model, bits, skip, settings, splits, device)
    steps = settings.steps if steps is None else steps
    res = fine_tune(qmodel, splits, steps=steps, lr=settings.lr, quant_lr=settings.lr, chunk=steps,
                    eval_images=settings.eval_images, curve_images=settings.curve_images,
                    batch_size=settings.batch_size, seed=settings.seed, device=device)
    return {"bits": bits, "skip": skip, "skip_bits": skip_bits_of(skip, bits), "fine_tune_steps": steps} | asdict(res)


def run(settings: Settings, splits=None, device: str = "cpu", out: Path | None = RESULTS) -> dict:
    """All runs; writes the JSON to ``out`` atomically (unless None) and returns it."""
    start = time.perf_counter()
    splits = splits or fashion_mnist_splits()
    fp_model = load_pretrained(settings.model, device)
    result = {"script": "python -m mpqlab.experiments.precision_highway", "seed": settings.seed,
              "settings": asdict(settings), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "float_accuracy": evaluate(fp_model, subset_loader(splits.test, settings.eval_images), device),
              "runs": []}
    for bits in settings.bits:
        for skip in settings.skips:
            row = one_run(fp_model, bits, skip, settings, splits, device)
            result["runs"].append(row)
            print(f"W{bits}A{bits}, {SKIPS[skip]}: {row['start_accuracy']:.3f} -> {row['accuracy']:.3f} "
                  f"({row['seconds']:.0f} s)", flush=True)
    return finish_result(result, start, out)


def main(argv=None) -> None:
    parser = experiment_parser(__doc__, RESULTS)
    parser.add_argument("--steps", type=int, default=Settings.steps, help="fine-tune steps per run")
    args = parse_experiment_args(parser, argv)
    result = run(Settings(steps=args.steps), out=args.out)
    report_written(args.out, result)


if __name__ == "__main__":
    main()
