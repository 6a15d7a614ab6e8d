"""Precompute notebook 08's binarization results on the shipped MobileNetV1-small.

Four configurations, each fine-tuned for ``steps`` SGD steps from the full-precision checkpoint with the
same seeded batches and learning rates as notebook 06's sweep (``mpqlab.qat.fine_tune``):

- ``W1A32``      binary weights (XNOR-Net: sign times the per-channel mean |W|), float activations;
- ``W1A1``       binary weights and 1-bit activations {0, s} (an unsigned LSQ step: the inputs follow a ReLU);
- ``W1A1-sign``  binary weights and sign activations, as in XNOR-Net: after a ReLU every input is >= 0, so
                 sign() maps all of them to +1 and the activations carry no information;
- ``W1A1-all``   as ``W1A1`` but the first conv and the classifier are binary too (the first conv's input,
                 a normalised image, is signed: it gets sign activations there).

All but ``W1A1-all`` keep the first conv and the classifier at 8 bits. The 4-bit reference (LSQ W4A4 with the
same steps) is in ``data/results/qat_sweep.json``.

    python -m mpqlab.experiments.binary [--steps 30] [--out PATH]

rewrites ``data/results/binary.json`` (one thread; the file records the seconds it took).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mpqlab.checkpoint import load_pretrained
from mpqlab.data import fashion_mnist_splits, repo_data_dir
from mpqlab.errors import MpqlabError, PolicyError
from mpqlab.experiments.cli import experiment_parser, finish_result, parse_experiment_args, report_written
from mpqlab.qat import build_qat_model, fine_tune, subset_loader
from mpqlab.quant.binary import BinaryActQuantizer, BinaryWeightQuantizer
from mpqlab.quant.lsq import LSQQuantizer
from mpqlab.quant.policy import model_policy, quantizable_layers
from mpqlab.quant.quantizer import FullPrecision
from mpqlab.train import evaluate

RESULTS = repo_data_dir() / "results" / "binary.json"
CONFIGS = ("W1A32", "W1A1", "W1A1-sign", "W1A1-all")


@dataclass
class Settings:
    model: str = "mobilenet_v1_small"  # shipped checkpoint every run starts from
    configs: tuple = CONFIGS
    steps: int = 30  # SGD steps of batch_size images per run (an epoch is 430 steps)
    chunk: int = 10  # a point on the training curve every chunk steps
    lr: float = 0.01  # network weights: SGD, momentum 0.9, cosine decay to 0
    quant_lr: float = 0.001  # LSQ step sizes
    batch_size: int = 128
    eval_images: int = 1000  # first N test images, scored before and after fine-tuning
    curve_images: int = 300  # first N validation images, scored after every chunk
    seed: int = 0


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


def run(settings: Settings, splits=None, device: str = "cpu", out: Path | None = RESULTS) -> dict:
    """All configurations; writes the JSON to ``out`` atomically (unless None) and returns it."""
    start = time.perf_counter()
    splits = splits or fashion_mnist_splits()
    fp_model = load_pretrained(settings.model, device)
    result = {"script": "python -m mpqlab.experiments.binary", "seed": settings.seed,
              "settings": asdict(settings), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "float_accuracy": evaluate(fp_model, subset_loader(splits.test, settings.eval_images), device),
              "runs": []}
    for config in settings.configs:
        qmodel = binary_model(fp_model, config)
        row = {"config": config, "policy": {k: list(v) for k, v in model_policy(qmodel).items()}}
        try:
            res = fine_tune(qmodel, splits, settings.steps, settings.lr, settings.quant_lr, settings.chunk,
                            settings.eval_images, settings.curve_images, settings.batch_size, settings.seed,
                            device=device)
            row |= asdict(res)
        except MpqlabError as err:
            row["error"] = f"{type(err).__name__}: {err}"
        result["runs"].append(row)
        shown = row.get("error") or f"{row['start_accuracy']:.3f} -> {row['accuracy']:.3f} ({row['seconds']:.0f} s)"
        print(f"{config:>10s}: {shown}", flush=True)
    return finish_result(result, start, out)


def main(argv=None) -> None:
    parser = experiment_parser(__doc__, RESULTS)
    parser.add_argument("--steps", type=int, default=Settings.steps, help="fine-tune steps per configuration")
    args = parse_experiment_args(parser, argv)
    result = run(Settings(steps=args.steps), out=args.out)
    report_written(args.out, result)


if __name__ == "__main__":
    main()
