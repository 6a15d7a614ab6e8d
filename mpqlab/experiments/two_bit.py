"""Precompute notebook 06's controlled runs on why LSQ at W2A2 stays at chance on MobileNetV1-small.

The sweep (``qat_sweep``) leaves every method near 10% at W2A2. Each run here changes one thing against
the sweep's LSQ W2A2 run (same seed, batches, learning rates, first conv and classifier at 8 bits):

    longer        the same, for ``long_steps`` steps (about one epoch) instead of ``steps``
    lower lr      learning rates ten times smaller
    W2A4          2-bit weights, 4-bit activations
    W4A2          4-bit weights, 2-bit activations
    ResNet-20     the same W2A2 recipe on the shipped ResNet-20, whose skip connections carry the signal
    QIL 5-4-3-2   QIL's progressive schedule: W5A5, then 4, 3 and 2 bits, ``steps`` steps each, every stage
                  starting from the last one's weights and intervals (Jung et al. 2019)

    python -m mpqlab.experiments.two_bit [--steps 90] [--long-steps 430] [--out PATH]

rewrites ``data/results/two_bit.json`` (one thread; the file records the seconds it took).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mpqlab.checkpoint import load_pretrained
from mpqlab.data import fashion_mnist_splits, repo_data_dir
from mpqlab.errors import MpqlabError
from mpqlab.experiments.cli import experiment_parser, finish_result, parse_experiment_args, report_written
from mpqlab.qat import build_qat_model, fine_tune
from mpqlab.quant.qil import progressive_schedule
from mpqlab.quant.qil import set_bits as qil_set_bits

RESULTS = repo_data_dir() / "results" / "two_bit.json"


@dataclass
class Settings:
    steps: int = 90  # as in the sweep
    long_steps: int = 430  # one epoch of 128-image batches, near enough
    lr: float = 0.01
    quant_lr: float = 0.001
    chunk: int = 10
    batch_size: int = 128
    eval_images: int = 1000
    curve_images: int = 300
    seed: int = 0


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


def one_run(config: dict, settings: Settings, splits, device: str = "cpu") -> dict:
    """Fine-tune one configuration; a quantizer pushed out of its valid range is recorded as an error.

    With a ``schedule`` the stages run one after another on the same model, and the curve spans all of them.
    """
    model = load_pretrained(config["model"], device)
    schedule = config["schedule"] or [config["w_bits"]]
    qmodel = build_qat_model(model, config["method"], schedule[0], a_bits=config["a_bits"] if not config["schedule"] else None)
    chunk = max(settings.chunk, config["steps"] // 10)
    row = config | {"steps": [], "train_loss": [], "val_accuracy": [], "stage_accuracy": [], "seconds": 0.0}
    for stage, bits in enumerate(schedule):
        if config["schedule"]:
            qil_set_bits(qmodel, bits)
        try:
            res = fine_tune(qmodel, splits, config["steps"], config["lr"], config["quant_lr"], chunk,
                            settings.eval_images, settings.curve_images, settings.batch_size, settings.seed + stage,
                            device=device, initialize=stage == 0)
        except MpqlabError as err:
            return row | {"error": f"{type(err).__name__}: {err}"}
        if stage == 0:
            row["start_accuracy"] = res.start_accuracy
        row["steps"] += [stage * config["steps"] + s for s in res.steps]
        row["train_loss"] += res.train_loss
        row["val_accuracy"] += res.val_accuracy
        row["stage_accuracy"].append(res.accuracy)
        row["seconds"] += res.seconds
    return row | {"accuracy": row["stage_accuracy"][-1]}


def run(settings: Settings, splits=None, device: str = "cpu", out: Path | None = RESULTS,
        only: tuple[str, ...] | None = None) -> dict:
    """Every configuration (or those whose label is in ``only``); writes the JSON to ``out`` unless None."""
    start = time.perf_counter()
    splits = splits or fashion_mnist_splits()
    result = {"script": "python -m mpqlab.experiments.two_bit", "seed": settings.seed, "settings": asdict(settings),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "runs": []}
    for config in configs(settings):
        if only and config["label"] not in only:
            continue
        row = one_run(config, settings, splits, device)
        result["runs"].append(row)
        shown = row.get("error") or f"{row['start_accuracy']:.3f} -> {row['accuracy']:.3f} ({row['seconds']:.0f} s)"
        print(f"{row['label']:>16s}: {shown}", flush=True)
    return finish_result(result, start, out)


def main(argv=None) -> None:
    parser = experiment_parser(__doc__, RESULTS)
    parser.add_argument("--steps", type=int, default=Settings.steps, help="fine-tune steps of the short runs")
    parser.add_argument("--long-steps", type=int, default=Settings.long_steps, help="steps of the 'longer' run")
    args = parse_experiment_args(parser, argv)
    result = run(Settings(steps=args.steps, long_steps=args.long_steps), out=args.out)
    report_written(args.out, result)


if __name__ == "__main__":
    main()
