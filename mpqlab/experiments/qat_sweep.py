"""Precompute notebook 06's quantization-aware training sweep: PACT, QIL, LSQ, LSQ+ at W4A4, W3A3, W2A2, over seeds.

Every run starts from the shipped MobileNetV1-small checkpoint, keeps the first conv and the classifier at
8 bits (``mpqlab.qat.build_qat_model``), and fine-tunes for ``steps`` SGD steps of 128 images
(``mpqlab.qat.fine_tune``). That is a small fraction of one epoch (430 steps): the numbers show where each
method starts and how fast it recovers, not where it would end after the papers' 90+ epochs. (50 steps, not
the 90 of the single-seed version: three seeds and scoring on all 10,000 test images cost the rest of the
budget of about half an hour on one core.)

A seed fixes the data order (and torch's global seed); every method and bit-width runs with the same seeds,
so the accuracies of one seed are paired and the notebook compares settings within pairs (``mpqlab.stats``).
The network is scored on the full 10,000-image test set before fine-tuning (``start_accuracy``, on the
first ``start_images`` test images: all of them) and after it (``accuracy``, on the first ``eval_images``), so
the gain is measured like for like; ``subset_accuracy`` is the score after fine-tuning on the
``start_images`` images (the same number as ``accuracy`` when both cover the whole test set). The training
curve uses a small validation subset.

One more run per seed repeats LSQ at ``ablation_bits`` with the gradient scale switched off (g = 1 instead
of 1/sqrt(N Q_P)) at the same learning rates: the LSQ paper's ablation, in miniature. A run whose quantizer
parameters leave their valid range (a step size pushed below zero) is recorded with its error message.

    python -m mpqlab.experiments.qat_sweep [--steps 50] [--bits 4 3 2] [--seeds 0 1 2] [--out PATH]

rewrites ``data/results/qat_sweep.json`` after every finished run (one thread; the file records the wall and
CPU seconds it took). A stopped run continues where it stopped if the settings are the same.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mpqlab.checkpoint import load_pretrained
from mpqlab.data import calibration_batch, fashion_mnist_splits, repo_data_dir
from mpqlab.errors import MpqlabError
from mpqlab.experiments.cli import (ResumableResult, experiment_parser, parse_experiment_args, report_written,
                                    result_header)
from mpqlab.qat import build_qat_model, clip_vs_max, fine_tune, subset_loader
from mpqlab.quant.pact import pact_l2
from mpqlab.stats import Interval, paired_difference
from mpqlab.train import evaluate

RESULTS = repo_data_dir() / "results" / "qat_sweep.json"


@dataclass
class Settings:
    model: str = "mobilenet_v1_small"  # shipped checkpoint every run starts from
    methods: tuple = ("pact", "qil", "lsq", "lsq_plus")
    bits: tuple = (4, 3, 2)  # W{b}A{b}; first conv and fc stay at first_last_bits
    first_last_bits: int = 8
    steps: int = 50  # SGD steps of batch_size images per run (an epoch is 430 steps)
    chunk: int = 10  # a point on the training curve every chunk steps
    lr: float = 0.01  # network weights: SGD, momentum 0.9, cosine decay to 0, no weight decay
    quant_lr: float = 0.001  # quantizer parameters (alpha, c, d, gamma, s, beta)
    pact_lambda: float = 1e-4  # PACT's L2 penalty on alpha
    batch_size: int = 128
    eval_images: int = 10_000  # first N test images (all of them), scored after fine-tuning
    start_images: int = 10_000  # first N test images (all of them), scored before fine-tuning and again after it
    curve_images: int = 300  # first N validation images, scored after every chunk
    ablation_bits: int = 3  # LSQ with g = 1 at this bit-width (at 2 bits even the run with g stays at chance)
    seeds: tuple = (0, 1, 2)  # each seed: the data order, the same for every method and bit-width


def one_run(fp_model, method: str, bits: int, settings: Settings, splits, grad_scale: bool = True,
            device: str = "cpu", seed: int = 0) -> dict:
    """Build, fine-tune and score one configuration with one seed; returns a JSON-ready dict."""
    qmodel = build_qat_model(fp_model, method, bits, settings.first_last_bits, grad_scale=grad_scale)
    extra = (lambda m: settings.pact_lambda * pact_l2(m)) if method == "pact" else None
    row = {"method": method, "bits": bits, "grad_scale": grad_scale, "seed": seed}
    start = time.perf_counter()
    try:
        res = fine_tune(qmodel, splits, settings.steps, settings.lr, settings.quant_lr, settings.chunk,
                        settings.start_images, settings.curve_images, settings.batch_size, seed,
                        extra_loss=extra, device=device)
    except MpqlabError as err:  # e.g. a step size driven below zero: that is a result too
        return row | {"error": f"{type(err).__name__}: {err}"}
    # the final score on the first eval_images test images; fine_tune's own "accuracy" is on the first
    # start_images, so with equal counts it is the same number and the test set is not scored twice
    if settings.start_images == settings.eval_images:
        accuracy = res.accuracy
    else:
        accuracy = evaluate(qmodel, subset_loader(splits.test, settings.eval_images), device)
    images, _ = calibration_batch(splits, min(256, len(splits.train)), seed)
    return (row | asdict(res) | {"subset_accuracy": res.accuracy, "accuracy": accuracy,
                                 "seconds": time.perf_counter() - start, "clips": clip_vs_max(qmodel, images, device)})


def planned_runs(settings: Settings) -> list[tuple[str, int, bool, int]]:
    """Every (method, bits, grad_scale, seed), seed by seed, so a stopped precompute leaves whole seeds.

    Per seed: every method at every bit-width with LSQ's gradient scale on, then LSQ at ``ablation_bits``
    with g = 1 (if LSQ is among the methods and ``ablation_bits`` is not 0).
    """
    configs = [(m, b, True) for b in settings.bits for m in settings.methods]
    if "lsq" in settings.methods and settings.ablation_bits:
        configs.append(("lsq", settings.ablation_bits, False))
    return [(m, b, g, seed) for seed in settings.seeds for m, b, g in configs]


def run_key(row: dict) -> tuple[str, int, bool, int]:
    return row["method"], row["bits"], row["grad_scale"], row["seed"]


def run(settings: Settings, splits=None, device: str = "cpu", out: Path | None = RESULTS) -> dict:
    """All runs for every seed; ``out`` (unless None) is rewritten atomically after each finished run.

    Runs already in ``out`` from the same settings are kept, so a stopped precompute continues.
    """
    splits = splits or fashion_mnist_splits()
    fp_model = load_pretrained(settings.model, device)
    header = result_header("qat_sweep", settings)
    progress = ResumableResult(settings, out, header)
    result = progress.result
    progress.keep("float_accuracy", lambda: evaluate(fp_model, subset_loader(splits.test, settings.eval_images), device))
    todo = progress.remaining(planned_runs(settings), {run_key(r) for r in result["runs"]})
    for method, bits, grad_scale, seed in todo:
        row = one_run(fp_model, method, bits, settings, splits, grad_scale, device, seed)
        result["runs"].append(row)
        progress.save()
        shown = row.get("error") or f"{row['start_accuracy']:.4f} -> {row['accuracy']:.4f} ({row['seconds']:.0f} s)"
        print(f"seed {seed} {method:>9s} W{bits}A{bits} g={'on' if grad_scale else 'off'}: {shown}", flush=True)
    return progress.finish()


def by_seed(runs: list[dict], key: str = "accuracy", **match) -> dict[int, float]:
    """``{seed: 100 * run[key]}`` for the runs whose fields equal ``match`` (e.g. ``method="lsq", bits=4``).

    Accuracies in percent, so that differences are in the "points" of ``mpqlab.stats.verdict``. A run that
    stopped with an error has no accuracy and is left out (its seed then has no pair).
    """
    return {r["seed"]: 100 * r[key] for r in runs
            if key in r and all(r.get(field) == value for field, value in match.items())}


def paired_points(a: dict[int, float], b: dict[int, float]) -> Interval:
    """95% interval of mean(a_seed - b_seed) over the seeds both have (``by_seed`` dicts; Student's t)."""
    seeds = sorted(set(a) & set(b))
    return paired_difference([a[s] for s in seeds], [b[s] for s in seeds])


def mean_sd(values, digits: int = 1) -> str:
    """``"mean ± sd"`` of the values (sample sd, n - 1), or ``"failed"`` if there are none."""
    x = torch.tensor(list(values), dtype=torch.float64)
    if x.numel() == 0:
        return "failed"
    sd = float(x.std()) if x.numel() > 1 else float("nan")
    return f"{float(x.mean()):.{digits}f} ± {sd:.{digits}f}"


def main(argv=None) -> None:
    parser = experiment_parser(__doc__, RESULTS)
    parser.add_argument("--steps", type=int, default=Settings.steps, help="fine-tune steps per run")
    parser.add_argument("--bits", type=int, nargs="+", default=list(Settings.bits), help="bit-widths to run")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(Settings.seeds),
                        help="seeds (data order), the same for every method and bit-width")
    parser.add_argument("--no-ablation", action="store_true", help="skip the g = 1 runs")
    args = parse_experiment_args(parser, argv)
    settings = Settings(steps=args.steps, bits=tuple(args.bits), seeds=tuple(args.seeds),
                        ablation_bits=0 if args.no_ablation else Settings.ablation_bits)
    result = run(settings, out=args.out)
    report_written(args.out, result)


if __name__ == "__main__":
    main()
