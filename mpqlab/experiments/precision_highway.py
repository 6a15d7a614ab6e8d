"""Precompute notebook 05's precision-highway table: ResNet-20 with low-bit residual branches, skips at
b bits (everything quantized), 8 bits or full precision, before and after a short fine-tune, over seeds.

Every run starts from the shipped ResNet-20 checkpoint. ``mpqlab.highway.highway_resnet`` quantizes
every branch conv at W{b}A{b} (stem conv and classifier at 8 bits) and puts a skip quantizer on every
block input; static activation ranges are calibrated on 256 training images. ``mpqlab.qat.fine_tune``
then re-estimates batch norm on the quantized network, scores it (``start_accuracy``), runs ``steps``
SGD steps of ``batch_size`` images, and scores it again, on the full test set. A seed picks the
calibration images and the data order; every design runs with the same seeds, so the accuracies of one
seed are paired and the notebook compares designs within pairs (``mpqlab.stats``). The fine-tune is short
(200 steps of 32 images, under 12% of one epoch): ResNet-20 costs about ten times more than
MobileNetV1-small per image.

    python -m mpqlab.experiments.precision_highway [--steps 200] [--seeds 0 1 2] [--out PATH]

rewrites ``data/results/precision_highway.json`` after every finished run (one thread; the file records
the seconds it took). A stopped run continues where it stopped if the settings are the same.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from mpqlab.checkpoint import load_pretrained
from mpqlab.data import calibration_batch, fashion_mnist_splits, repo_data_dir
from mpqlab.experiments.cli import (ResumableResult, experiment_parser, parse_experiment_args, report_written,
                                    result_header)
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
    steps: int = 200  # SGD steps of batch_size images (an epoch is 1718 such steps)
    lr: float = 0.01  # SGD, momentum 0.9, cosine decay to 0, no weight decay
    batch_size: int = 32
    eval_images: int = 10_000  # first N test images (all of them), scored before and after fine-tuning
    curve_images: int = 200  # first N validation images, scored every `steps` steps (once)
    seeds: tuple = (0, 1, 2)  # each seed: calibration images and data order, the same for every design


def skip_bits_of(skip: str, bits: int) -> int | None:
    """The skip quantizer's bit-width for a skip setting: 'quantized' -> bits, '8' -> 8, 'float' -> None."""
    return {"quantized": bits, "8": 8, "float": None}[skip]


def build(fp_model, bits: int, skip: str, settings: Settings, splits, device: str = "cpu", seed: int = 0):
    """The calibrated quantized copy of ``fp_model`` for one (bits, skip) setting."""
    qmodel = highway_resnet(fp_model, bits, skip_bits_of(skip, bits), settings.first_last_bits)
    images, _ = calibration_batch(splits, settings.calib_images, seed)
    return calibrate(qmodel, images, device=device)


def one_run(fp_model, bits: int, skip: str, settings: Settings, splits, device: str = "cpu",
            steps: int | None = None, seed: int = 0) -> dict:
    """Build, calibrate, fine-tune (``steps`` overrides the settings) and score one setting with one seed."""
    qmodel = build(fp_model, bits, skip, settings, splits, device, seed)
    steps = settings.steps if steps is None else steps
    res = fine_tune(qmodel, splits, steps=steps, lr=settings.lr, quant_lr=settings.lr, chunk=steps,
                    eval_images=settings.eval_images, curve_images=settings.curve_images,
                    batch_size=settings.batch_size, seed=seed, device=device)
    return ({"bits": bits, "skip": skip, "skip_bits": skip_bits_of(skip, bits), "seed": seed,
             "fine_tune_steps": steps} | asdict(res))


def planned_runs(settings: Settings) -> list[tuple[int, str, int]]:
    """Every (bits, skip, seed), seed by seed, so a stopped precompute leaves whole seeds behind it."""
    return [(bits, skip, seed) for seed in settings.seeds for bits in settings.bits for skip in settings.skips]


def run(settings: Settings, splits=None, device: str = "cpu", out: Path | None = RESULTS) -> dict:
    """Every design at every bit-width and seed; ``out`` (unless None) is rewritten after each run.

    Runs already in ``out`` from the same settings are kept, so a stopped precompute continues.
    """
    splits = splits or fashion_mnist_splits()
    fp_model = load_pretrained(settings.model, device)
    header = result_header("precision_highway", settings)
    progress = ResumableResult(settings, out, header)
    result = progress.result
    progress.keep("float_accuracy", lambda: evaluate(fp_model, subset_loader(splits.test, settings.eval_images), device))
    todo = progress.remaining(planned_runs(settings), {(r["bits"], r["skip"], r["seed"]) for r in result["runs"]})
    for bits, skip, seed in todo:
        row = one_run(fp_model, bits, skip, settings, splits, device, seed=seed)
        result["runs"].append(row)
        progress.save()
        print(f"seed {seed}, W{bits}A{bits}, {SKIPS[skip]}: {row['start_accuracy']:.4f} -> {row['accuracy']:.4f} "
              f"({row['seconds']:.0f} s)", flush=True)
    return progress.finish()


def main(argv=None) -> None:
    parser = experiment_parser(__doc__, RESULTS)
    parser.add_argument("--steps", type=int, default=Settings.steps, help="fine-tune steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(Settings.seeds),
                        help="seeds (calibration images and data order), the same for every design")
    args = parse_experiment_args(parser, argv)
    result = run(Settings(steps=args.steps, seeds=tuple(args.seeds)), out=args.out)
    report_written(args.out, result)


if __name__ == "__main__":
    main()
