"""Precompute notebook 08's binarization results on the shipped MobileNetV1-small, over seeds.

Four binary configurations and a 4-bit reference, each fine-tuned for ``steps`` SGD steps from the
full-precision checkpoint with ``mpqlab.qat.fine_tune`` (the recipe of notebook 06: quantizers initialised
from data, batch norm re-estimated, SGD with momentum 0.9 and cosine decay, LSQ steps at ``quant_lr``):

- ``W4A4``       the reference: LSQ at 4 bits for weights and activations (Esser et al. 2020);
- ``W1A32``      binary weights (XNOR-Net: sign times the per-channel mean |W|), float activations;
- ``W1A1``       binary weights and 1-bit activations {0, s} (an unsigned LSQ step: the inputs follow a ReLU);
- ``W1A1-sign``  binary weights and sign activations, as in XNOR-Net: after a ReLU every input is >= 0, so
                 sign() maps all of them to +1 and the activations carry no information;
- ``W1A1-all``   as ``W1A1`` but the first conv and the classifier are binary too (the first conv's input,
                 a normalised image, is signed: it gets sign activations there).

All but ``W1A1-all`` keep the first conv and the classifier at 8 bits. A seed fixes the order of the
training batches (initialisation and batch-norm images are the same for every seed); every configuration
runs with the same seeds, so the accuracies of one seed are paired and the notebook compares
configurations within pairs (``mpqlab.stats``). The accuracies before and after the fine-tune are scored on
the full test set (10,000 images); the training curve on the first ``curve_images`` validation images.

The fine-tune is 240 steps of 128 images (0.56 epochs), eight times the 30 steps of the first version: on one
thread a step costs about 0.25 s and scoring the test set about 9 s, so the 15 runs take about 22 minutes.
That is still far shorter than binary networks are normally trained (many epochs).

    python -m mpqlab.experiments.binary [--steps 240] [--seeds 0 1 2] [--out PATH]

rewrites ``data/results/binary.json`` after every finished run (one thread; the file records the wall
``seconds``, added up over resumed sessions). A stopped run continues where it stopped if the settings are
the same; ``complete`` is true once every run is in the file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from mpqlab.checkpoint import load_pretrained
from mpqlab.data import fashion_mnist_splits, repo_data_dir
from mpqlab.errors import MpqlabError, PolicyError
from mpqlab.experiments.cli import (ResumableResult, experiment_parser, parse_experiment_args, report_written,
                                    result_header)
from mpqlab.qat import build_qat_model, fine_tune, subset_loader
from mpqlab.quant.binary import BinaryActQuantizer, BinaryWeightQuantizer
from mpqlab.quant.lsq import LSQQuantizer
from mpqlab.quant.policy import model_policy, quantizable_layers
from mpqlab.quant.quantizer import FullPrecision
from mpqlab.stats import seed_values
from mpqlab.train import evaluate

RESULTS = repo_data_dir() / "results" / "binary.json"
CONFIGS = ("W1A32", "W1A1", "W1A1-sign", "W1A1-all")
REFERENCE = "W4A4"  # LSQ at 4 bits, first conv and classifier at 8 bits


@dataclass
class Settings:
    model: str = "mobilenet_v1_small"  # shipped checkpoint every run starts from
    configs: tuple = (REFERENCE,) + CONFIGS
    steps: int = 240  # SGD steps of batch_size images per run (an epoch is 430 steps)
    chunk: int = 20  # a point on the training curve every chunk steps
    lr: float = 0.01  # network weights: SGD, momentum 0.9, cosine decay to 0
    quant_lr: float = 0.001  # LSQ step sizes
    batch_size: int = 128
    eval_images: int = 10_000  # first N test images (all of them), scored before and after fine-tuning
    curve_images: int = 300  # first N validation images, scored after every chunk
    seeds: tuple = (0, 1, 2)  # each seed: one data order, the same for every configuration


def binary_model(fp_model, config: str):
    """The quantized copy of ``fp_model`` for one of ``CONFIGS``."""
    if config not in CONFIGS:
        raise PolicyError(f"unknown binary configuration {config!r}; choose one of {list(CONFIGS)}")
    first = quantizable_layers(fp_model)[0]

    def weights(bits, name, layer):
        return BinaryWeightQuantizer()

    def acts(bits, name, layer):
        if config == "W1A32":
            return FullPrecision()
        if config == "W1A1-sign" or (config == "W1A1-all" and name == first):
            return BinaryActQuantizer()
        return LSQQuantizer(1, "act")  # levels {0, s}

    first_last = None if config == "W1A1-all" else 8
    return build_qat_model(fp_model, "lsq", 1, first_last, weight_factory=weights, act_factory=acts)


def config_model(fp_model, config: str):
    """The quantized copy of ``fp_model`` for ``REFERENCE`` (LSQ W4A4) or one of ``CONFIGS``."""
    if config == REFERENCE:
        return build_qat_model(fp_model, "lsq", 4, 8)
    if config not in CONFIGS:
        raise PolicyError(f"unknown configuration {config!r}; choose one of {[REFERENCE, *CONFIGS]}")
    return binary_model(fp_model, config)


def planned_runs(settings: Settings) -> list[tuple[str, int]]:
    """Every (config, seed), seed by seed, so a stopped precompute leaves whole seeds behind it."""
    return [(config, seed) for seed in settings.seeds for config in settings.configs]


def one_run(fp_model, config: str, settings: Settings, splits, seed: int, device: str = "cpu") -> dict:
    """Build, fine-tune and score one configuration with one seed (an ``error`` entry if the run refuses)."""
    qmodel = config_model(fp_model, config)
    row = {"config": config, "seed": seed, "policy": {k: list(v) for k, v in model_policy(qmodel).items()}}
    try:
        res = fine_tune(qmodel, splits, settings.steps, settings.lr, settings.quant_lr, settings.chunk,
                        settings.eval_images, settings.curve_images, settings.batch_size, seed, device=device)
        row |= asdict(res)
    except MpqlabError as err:  # recorded, not raised: the other runs stay usable and the notebook says why
        row["error"] = f"{type(err).__name__}: {err}"
    return row


def seed_accuracies(result: dict, config: str, key: str = "accuracy") -> list[float]:
    """``key`` (``"accuracy"`` after the fine-tune, ``"start_accuracy"`` before) of ``config``'s runs in
    ``result``, in the order of ``result["seeds"]`` (``mpqlab.stats.seed_values``: paired, gaps refused)."""
    return [float(v) for v in seed_values(result["runs"], key, result["seeds"], config=config)]

def run(settings: Settings, splits=None, device: str = "cpu", out: Path | None = RESULTS) -> dict:
    """Every configuration for every seed; ``out`` (unless None) is rewritten atomically after each run.

    Runs already in ``out`` from the same settings are kept, so a stopped precompute continues.
    """
    for config in settings.configs:  # refuse a typo before any run, not after an hour
        if config != REFERENCE and config not in CONFIGS:
            raise PolicyError(f"unknown configuration {config!r}; choose one of {[REFERENCE, *CONFIGS]}")
    splits = splits or fashion_mnist_splits()
    fp_model = load_pretrained(settings.model, device)
    header = result_header("binary", settings)
    progress = ResumableResult(settings, out, header)
    result = progress.result
    progress.keep("float_accuracy", lambda: evaluate(fp_model, subset_loader(splits.test, settings.eval_images), device))
    for config, seed in progress.remaining(planned_runs(settings), {(r["config"], r["seed"]) for r in result["runs"]}):
        row = one_run(fp_model, config, settings, splits, seed, device)
        result["runs"].append(row)
        progress.save()
        shown = row.get("error") or f"{row['start_accuracy']:.4f} -> {row['accuracy']:.4f} ({row['seconds']:.0f} s)"
        print(f"seed {seed} {config:>10s}: {shown}", flush=True)
    return progress.finish()


def main(argv=None) -> None:
    parser = experiment_parser(__doc__, RESULTS)
    parser.add_argument("--steps", type=int, default=Settings.steps, help="fine-tune steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(Settings.seeds),
                        help="seeds (data order), the same for every configuration")
    args = parse_experiment_args(parser, argv)
    result = run(Settings(steps=args.steps, seeds=tuple(args.seeds)), out=args.out)
    report_written(args.out, result)


if __name__ == "__main__":
    main()
