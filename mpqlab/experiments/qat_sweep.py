"""Precompute notebook 06's quantization-aware training sweep: PACT, QIL, LSQ, LSQ+ at W4A4, W3A3, W2A2.

Every run starts from the shipped MobileNetV1-small checkpoint, keeps the first conv and the classifier at
8 bits (``mpqlab.qat.build_qat_model``), and fine-tunes for ``steps`` SGD steps of 128 images on the same
seeded batches (``mpqlab.qat.fine_tune``). That is a small fraction of one epoch (430 steps): the numbers show
where each method starts and how fast it recovers, not where it would end after the papers' 90+ epochs.

One more run repeats LSQ at ``ablation_bits`` with the gradient scale switched off (g = 1 instead of
1/sqrt(N Q_P)) at the same learning rates: the LSQ paper's ablation, in miniature. A run whose quantizer
parameters leave their valid range (a step size pushed below zero) is recorded with its error message.

    python -m mpqlab.experiments.qat_sweep [--steps 90] [--bits 4 3 2] [--out PATH]

rewrites ``data/results/qat_sweep.json`` (one thread; the file records the seconds it took).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mpqlab.checkpoint import load_pretrained
from mpqlab.data import calibration_batch, fashion_mnist_splits, repo_data_dir
from mpqlab.errors import MpqlabError
from mpqlab.experiments.cli import experiment_parser, finish_result, parse_experiment_args, report_written
from mpqlab.qat import build_qat_model, clip_vs_max, fine_tune, subset_loader
from mpqlab.quant.pact import pact_l2
from mpqlab.train import evaluate

RESULTS = repo_data_dir() / "results" / "qat_sweep.json"


@dataclass
class Settings:
    model: str = "mobilenet_v1_small"  # shipped checkpoint every run starts from
    methods: tuple = ("pact", "qil", "lsq", "lsq_plus")
    bits: tuple = (4, 3, 2)  # W{b}A{b}; first conv and fc stay at first_last_bits
    first_last_bits: int = 8
    steps: int = 90  # SGD steps of batch_size images per run (an epoch is 430 steps)
    chunk: int = 10  # a point on the training curve every chunk steps
    lr: float = 0.01  # network weights: SGD, momentum 0.9, cosine decay to 0, no weight decay
    quant_lr: float = 0.001  # quantizer parameters (alpha, c, d, gamma, s, beta)
    pact_lambda: float = 1e-4  # PACT's L2 penalty on alpha
    batch_size: int = 128
    eval_images: int = 1000  # first N test images, scored before and after fine-tuning
    curve_images: int = 300  # first N validation images, scored after every chunk
    ablation_bits: int = 3  # LSQ with g = 1 at this bit-width (at 2 bits even the run with g stays at chance)
    seed: int = 0


def one_run(fp_model, method: str, bits: int, settings: Settings, splits, grad_scale: bool = True,
            device: str = "cpu") -> dict:
    """Build, fine-tune and score one configuration; returns a JSON-ready dict."""
    qmodel = build_qat_model(fp_model, method, bits, settings.first_last_bits, grad_scale=grad_scale)
    extra = (lambda m: settings.pact_lambda * pact_l2(m)) if method == "pact" else None
    row = {"method": method, "bits": bits, "grad_scale": grad_scale}
    try:
        res = fine_tune(qmodel, splits, settings.steps, settings.lr, settings.quant_lr, settings.chunk,
                        settings.eval_images, settings.curve_images, settings.batch_size, settings.seed,
                        extra_loss=extra, device=device)
    except MpqlabError as err:  # e.g. a step size driven below zero: that is a result too
        return row | {"error": f"{type(err).__name__}: {err}"}
    images, _ = calibration_batch(splits, min(256, len(splits.train)), settings.seed)
    return row | asdict(res) | {"clips": clip_vs_max(qmodel, images, device)}


def run(settings: Settings, splits=None, device: str = "cpu", out: Path | None = RESULTS) -> dict:
    """All runs; writes the JSON to ``out`` atomically (unless None) and returns it."""
    start = time.perf_counter()
    splits = splits or fashion_mnist_splits()
    fp_model = load_pretrained(settings.model, device)
    result = {"script": "python -m mpqlab.experiments.qat_sweep", "seed": settings.seed,
              "settings": asdict(settings), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "float_accuracy": evaluate(fp_model, subset_loader(splits.test, settings.eval_images), device),
              "runs": []}
    configs = [(m, b, True) for b in settings.bits for m in settings.methods]
    if "lsq" in settings.methods and settings.ablation_bits:
        configs.append(("lsq", settings.ablation_bits, False))
    for method, bits, grad_scale in configs:
        row = one_run(fp_model, method, bits, settings, splits, grad_scale, device)
        result["runs"].append(row)
        shown = row.get("error") or f"{row['start_accuracy']:.3f} -> {row['accuracy']:.3f} ({row['seconds']:.0f} s)"
        print(f"{method:>9s} W{bits}A{bits} g={'on' if grad_scale else 'off'}: {shown}", flush=True)
    return finish_result(result, start, out)


def main(argv=None) -> None:
    parser = experiment_parser(__doc__, RESULTS)
    parser.add_argument("--steps", type=int, default=Settings.steps, help="fine-tune steps per run")
    parser.add_argument("--bits", type=int, nargs="+", default=list(Settings.bits), help="bit-widths to run")
    parser.add_argument("--no-ablation", action="store_true", help="skip the g = 1 run")
    args = parse_experiment_args(parser, argv)
    settings = Settings(steps=args.steps, bits=tuple(args.bits), ablation_bits=0 if args.no_ablation else Settings.ablation_bits)
    result = run(settings, out=args.out)
    report_written(args.out, result)


if __name__ == "__main__":
    main()
