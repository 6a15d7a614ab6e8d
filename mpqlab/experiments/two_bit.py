"""Precompute notebook 06's controlled runs on why LSQ at W2A2 stays at chance on MobileNetV1-small, over seeds.

The sweep (``qat_sweep``) leaves every method near 10% at W2A2. Each run here changes one thing against
the sweep's LSQ W2A2 run (same seeds, batches, learning rates, first conv and classifier at 8 bits):

    longer        the same, for ``long_steps`` steps (five times as many) instead of ``steps``
    lower lr      learning rates ten times smaller
    W2A4          2-bit weights, 4-bit activations
    W4A2          4-bit weights, 2-bit activations
    ResNet-20     the same W2A2 recipe on the shipped ResNet-20, whose skip connections carry the signal
    QIL 5-4-3-2   QIL's progressive schedule: W5A5, then 4, 3 and 2 bits, ``steps`` steps each, every stage
                  starting from the last one's weights and intervals (Jung et al. 2019)

A seed fixes the data order; every configuration runs with the same seeds, so the accuracies of one seed are
paired and the notebook compares configurations within pairs (``mpqlab.stats``). Stage k > 0 of the
progressive schedule draws its batches with seed ``seed + 1000 k``, an order no other run uses. Every
score is on the full 10,000-image test set: before fine-tuning and after each stage on the first
``start_images`` test images (``start_accuracy``, ``stage_accuracy``: all of them), and at the end on the first
``eval_images`` (``accuracy``, the last stage's score when the two counts are equal); the curves use a small
validation subset. 50 steps per run, not the 90 of the single-seed version, to fit three seeds on the full
test set into about 25 minutes of one core.

    python -m mpqlab.experiments.two_bit [--steps 50] [--long-steps 250] [--seeds 0 1 2] [--out PATH]

rewrites ``data/results/two_bit.json`` after every finished run (one thread; the file records the wall and
CPU seconds it took). A stopped run continues where it stopped if the settings are the same.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from mpqlab.checkpoint import load_pretrained
from mpqlab.data import fashion_mnist_splits, repo_data_dir
from mpqlab.errors import MpqlabError
from mpqlab.experiments.cli import (ResumableResult, experiment_parser, parse_experiment_args, report_written,
                                    result_header)
from mpqlab.qat import build_qat_model, fine_tune, subset_loader
from mpqlab.quant.qil import progressive_schedule
from mpqlab.quant.qil import set_bits as qil_set_bits
from mpqlab.train import evaluate

RESULTS = repo_data_dir() / "results" / "two_bit.json"


@dataclass
class Settings:
    steps: int = 50  # as in the sweep
    long_steps: int = 250  # five times as many (an epoch is 430 steps of 128 images)
    lr: float = 0.01
    quant_lr: float = 0.001
    chunk: int = 10
    batch_size: int = 128
    eval_images: int = 10_000  # first N test images (all of them), scored after the last stage
    start_images: int = 10_000  # first N test images (all of them), scored before fine-tuning and after every stage
    curve_images: int = 300  # first N validation images, scored every chunk steps
    seeds: tuple = (0, 1, 2)  # each seed: the data order, the same for every configuration


STAGE_SEED_STRIDE = 1000  # stage k of a schedule uses seed + 1000 k: no collision with the other seeds


def configs(settings: Settings) -> list[dict]:
    """One dict per run: label, model, method, w_bits, a_bits, steps (per stage), lr, quant_lr, schedule."""
    base = dict(model="mobilenet_v1_small", method="lsq", w_bits=2, a_bits=2, steps=settings.steps, lr=settings.lr,
                quant_lr=settings.quant_lr, schedule=None)
    return [
        base | {"label": "as in the sweep"},
        base | {"label": "longer", "steps": settings.long_steps},
        base | {"label": "lower lr", "lr": settings.lr / 10, "quant_lr": settings.quant_lr / 10},
        base | {"label": "W2A4", "a_bits": 4},
        base | {"label": "W4A2", "w_bits": 4},
        base | {"label": "ResNet-20", "model": "resnet20"},
        base | {"label": "QIL 5-4-3-2", "method": "qil", "schedule": list(progressive_schedule(5, 2))},
    ]


def one_run(config: dict, settings: Settings, splits, device: str = "cpu", seed: int = 0) -> dict:
    """Fine-tune one configuration with one seed; a quantizer pushed out of its valid range is recorded as an error.

    With a ``schedule`` the stages run one after another on the same model, and the curve spans all of them.
    """
    model = load_pretrained(config["model"], device)
    schedule = config["schedule"] or [config["w_bits"]]
    qmodel = build_qat_model(model, config["method"], schedule[0], a_bits=config["a_bits"] if not config["schedule"] else None)
    chunk = max(settings.chunk, config["steps"] // 10)
    row = config | {"seed": seed, "steps": [], "train_loss": [], "val_accuracy": [], "stage_accuracy": [],
                    "seconds": 0.0}
    for stage, bits in enumerate(schedule):
        if config["schedule"]:
            qil_set_bits(qmodel, bits)
        try:
            res = fine_tune(qmodel, splits, config["steps"], config["lr"], config["quant_lr"], chunk,
                            settings.start_images, settings.curve_images, settings.batch_size,
                            seed + STAGE_SEED_STRIDE * stage, device=device, initialize=stage == 0)
        except MpqlabError as err:
            return row | {"error": f"{type(err).__name__}: {err}"}
        if stage == 0:
            row["start_accuracy"] = res.start_accuracy
        row["steps"] += [stage * config["steps"] + s for s in res.steps]
        row["train_loss"] += res.train_loss
        row["val_accuracy"] += res.val_accuracy
        row["stage_accuracy"].append(res.accuracy)
        row["seconds"] += res.seconds
    # the final score on the first eval_images test images; stage_accuracy is on the first start_images, so
    # with equal counts the last stage's score is the same number and the test set is not scored twice
    started = time.perf_counter()
    if settings.start_images == settings.eval_images:
        accuracy = row["stage_accuracy"][-1]
    else:
        accuracy = evaluate(qmodel, subset_loader(splits.test, settings.eval_images), device)
    return row | {"subset_accuracy": row["stage_accuracy"][-1], "accuracy": accuracy,
                  "seconds": row["seconds"] + time.perf_counter() - started}


def planned_runs(settings: Settings, only: tuple[str, ...] | None = None) -> list[tuple[str, int]]:
    """Every (label, seed), seed by seed (only the labels in ``only``, if given): a stopped run leaves whole seeds."""
    labels = [c["label"] for c in configs(settings) if not only or c["label"] in only]
    return [(label, seed) for seed in settings.seeds for label in labels]


def run(settings: Settings, splits=None, device: str = "cpu", out: Path | None = RESULTS,
        only: tuple[str, ...] | None = None) -> dict:
    """Every configuration (or those whose label is in ``only``) for every seed; ``out`` (unless None) is
    rewritten atomically after each finished run. Runs already in ``out`` from the same settings are kept,
    so a stopped precompute continues."""
    splits = splits or fashion_mnist_splits()
    header = result_header("two_bit", settings)
    progress = ResumableResult(settings, out, header)
    result = progress.result
    by_label = {c["label"]: c for c in configs(settings)}
    for label, seed in progress.remaining(planned_runs(settings, only), {(r["label"], r["seed"]) for r in result["runs"]}):
        row = one_run(by_label[label], settings, splits, device, seed)
        result["runs"].append(row)
        progress.save()
        shown = row.get("error") or f"{row['start_accuracy']:.4f} -> {row['accuracy']:.4f} ({row['seconds']:.0f} s)"
        print(f"seed {seed} {label:>16s}: {shown}", flush=True)
    return progress.finish()


def main(argv=None) -> None:
    parser = experiment_parser(__doc__, RESULTS)
    parser.add_argument("--steps", type=int, default=Settings.steps, help="fine-tune steps of the short runs")
    parser.add_argument("--long-steps", type=int, default=Settings.long_steps, help="steps of the 'longer' run")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(Settings.seeds),
                        help="seeds (data order), the same for every configuration")
    args = parse_experiment_args(parser, argv)
    result = run(Settings(steps=args.steps, long_steps=args.long_steps, seeds=tuple(args.seeds)), out=args.out)
    report_written(args.out, result)


if __name__ == "__main__":
    main()
