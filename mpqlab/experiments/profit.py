"""Precompute notebook 07's PROFIT runs: progressive freezing vs. none, at W4A4 and W3A3, on the MobileNetV3-style net.

Every run starts from the shipped ``mobilenet_v3_small`` checkpoint, quantizes it with LSQ (first conv and
classifier at 8 bits, h-swish outputs on the shifted grid, ``mpqlab.profit.build_profit_model``) and trains
for four phases of ``phase_steps`` SGD steps on the same seeded batches. Batch norm keeps training (its
running statistics are what we watch). The last ``aiwq_steps`` steps of each phase also measure every
trainable layer's AIWQ. With ``freeze`` on, the next phase first freezes the layers with the largest
AIWQ: a third of them, then two thirds, then everything but batch norm (PROFIT). Without it, all layers
train in every phase. Each phase ends with the accuracy on the first ``eval_images`` test images and the
fluctuation of the batch-norm running means during the phase.

A second, smaller part fine-tunes the three h-swish grids (unsigned, signed, shifted) for ``scheme_steps``.
The runs are short next to the paper's (1.4 epochs in all): see the notebook for what that does and does not show.

    python -m mpqlab.experiments.profit [--phase-steps 150] [--bits 4 3] [--out PATH]

rewrites ``data/results/profit.json`` and a ``.log`` beside it (one thread; both record the seconds).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mpqlab.checkpoint import atomic_write_json, load_pretrained
from mpqlab.data import fashion_mnist_splits, repo_data_dir
from mpqlab.errors import MpqlabError
from mpqlab.experiments.cli import experiment_parser, parse_experiment_args, report_written
from mpqlab.profit import (aiwq_step, bn_fluctuation, bn_only, bn_running_means, build_profit_model, conv_role,
                           freeze_layers, layers_to_freeze, quant_layers)
from mpqlab.qat import param_groups, recalibrate_bn, subset_loader
from mpqlab.train import cosine_schedule, evaluate, repeat_epochs, seed_everything

RESULTS = repo_data_dir() / "results" / "profit.json"
PHASES = (("all layers train", 0.0), ("1/3 frozen", 1 / 3), ("2/3 frozen", 2 / 3), ("BN only", None))


@dataclass
class Settings:
    model: str = "mobilenet_v3_small"  # shipped checkpoint every run starts from
    bits: tuple = (4, 3)  # W{b}A{b}; first conv and fc stay at first_last_bits
    first_last_bits: int = 8
    phase_steps: int = 150  # SGD steps per phase; 4 phases = 600 steps, 1.4 epochs (an epoch is 429 steps)
    aiwq_steps: int = 3  # the last steps of each phase also measure AIWQ (averaged)
    scheme_steps: int = 20  # fine-tune steps for each h-swish grid (0: skip that part)
    scheme_bits: int = 3
    lr: float = 0.01  # network weights: SGD, momentum 0.9, cosine decay over all phases, no weight decay
    quant_lr: float = 0.001  # LSQ step sizes
    batch_size: int = 128
    calib_images: int = 1024  # initialise LSQ steps and re-estimate batch norm on these training images
    eval_images: int = 1000  # first N test images, scored after every phase
    seed: int = 0


def prepare(fp_model, bits: int, settings: Settings, splits, scheme: str = "shifted", device: str = "cpu"):
    """The quantized model with LSQ steps initialised and batch norm re-estimated on training images."""
    seed_everything(settings.seed)
    qmodel = build_profit_model(fp_model, bits, scheme, settings.first_last_bits).to(device)
    x = splits.train.tensors[0][: settings.calib_images].to(device)
    qmodel.eval()
    with torch.no_grad():
        qmodel(x[:256])  # LSQ's lazy step initialisation
    recalibrate_bn(qmodel, x, device=device)
    return qmodel


def _batches(splits, settings: Settings):
    generator = torch.Generator().manual_seed(settings.seed)
    return repeat_epochs(DataLoader(splits.train, batch_size=settings.batch_size, shuffle=True, generator=generator,
                                    drop_last=True))


def run_schedule(fp_model, bits: int, freeze: bool, settings: Settings, splits, scheme: str = "shifted",
                 phases=PHASES, device: str = "cpu") -> dict:
    """Train one quantized model through ``phases``, freezing by AIWQ between them if ``freeze``."""
    start = time.perf_counter()
    qmodel = prepare(fp_model, bits, settings, splits, scheme, device)
    scorer = subset_loader(splits.test, settings.eval_images)
    row = {"bits": bits, "freeze": freeze, "scheme": scheme, "start_accuracy": evaluate(qmodel, scorer, device),
           "phases": []}
    optimizer = torch.optim.SGD(param_groups(qmodel, settings.lr, settings.quant_lr), momentum=0.9)
    scheduler = cosine_schedule(optimizer, settings.phase_steps * len(phases))
    batches, scores, frozen = _batches(splits, settings), {}, []
    for i, (title, fraction) in enumerate(phases):
        title = title if freeze else f"phase {i + 1}, all layers train"
        newly = []
        if freeze and fraction is None:
            bn_only(qmodel)
        elif freeze and fraction > 0:
            newly = layers_to_freeze(scores, frozen, fraction)
            freeze_layers(qmodel, newly)
            frozen += newly
        history, losses, measured = [], [], []
        for step in tqdm(range(settings.phase_steps), desc=f"W{bits}A{bits} {title}", leave=False):
            qmodel.train()
            images, labels = next(batches)
            loss, q_kl, fp_kl = aiwq_step(qmodel, images.to(device), labels.to(device), optimizer,
                                          layers=None if step >= settings.phase_steps - settings.aiwq_steps else [])
            scheduler.step()
            losses.append(loss)
            history.append(bn_running_means(qmodel))
            if q_kl:
                measured.append((q_kl, fp_kl))
        phase_aiwq = {n: sum(m[0][n] for m in measured) / len(measured) for n in (measured[0][0] if measured else {})}
        phase_fp = {n: sum(m[1][n] for m in measured) / len(measured) for n in (measured[0][1] if measured else {})}
        scores.update(phase_aiwq)
        row["phases"].append({"phase": title, "newly_frozen": newly, "frozen": len(frozen),
                              "train_loss": sum(losses) / len(losses), "accuracy": evaluate(qmodel, scorer, device),
                              "bn_fluctuation": bn_fluctuation(history, qmodel) if len(history) > 1 else None,
                              "aiwq": phase_aiwq, "aiwq_float_weights": phase_fp})
    row["seconds"] = time.perf_counter() - start
    return row


def run(settings: Settings, splits=None, device: str = "cpu", out: Path | None = RESULTS) -> dict:
    """All runs; writes the JSON (and a .log) to ``out`` atomically (unless None) and returns it."""
    start = time.perf_counter()
    splits = splits or fashion_mnist_splits()
    fp_model = load_pretrained(settings.model, device)
    layers = quant_layers(build_profit_model(fp_model, 4, first_last_bits=settings.first_last_bits))
    result = {"script": "python -m mpqlab.experiments.profit", "seed": settings.seed, "settings": asdict(settings),
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "float_accuracy": evaluate(fp_model, subset_loader(splits.test, settings.eval_images), device),
              "layers": [{"name": n, "role": conv_role(m), "depth": i} for i, (n, m) in enumerate(layers.items())],
              "runs": [], "schemes": []}
    log = [f"float accuracy {result['float_accuracy']:.4f} on {settings.eval_images} test images"]
    for bits in settings.bits:
        for freeze in (False, True):
            try:
                row = run_schedule(fp_model, bits, freeze, settings, splits, device=device)
                accs = " -> ".join(f"{p['accuracy']:.3f}" for p in row["phases"])
                log.append(f"W{bits}A{bits} freeze={freeze}: {row['start_accuracy']:.3f} -> {accs} ({row['seconds']:.0f} s)")
            except MpqlabError as err:  # e.g. a step size driven below zero: that is a result too
                row = {"bits": bits, "freeze": freeze, "error": f"{type(err).__name__}: {err}"}
                log.append(f"W{bits}A{bits} freeze={freeze}: {row['error']}")
            result["runs"].append(row)
            print(log[-1], flush=True)
    if settings.scheme_steps:
        one = Settings(**{**asdict(settings), "phase_steps": settings.scheme_steps, "aiwq_steps": 0})
        for scheme in ("unsigned", "signed", "shifted"):
            row = {"bits": settings.scheme_bits, "scheme": scheme}
            try:
                done = run_schedule(fp_model, settings.scheme_bits, False, one, splits, scheme,
                                    phases=(("all layers train", 0.0),), device=device)
                row |= {"start_accuracy": done["start_accuracy"], "accuracy": done["phases"][-1]["accuracy"],
                        "seconds": done["seconds"]}
                log.append(f"h-swish grid {scheme} W{row['bits']}A{row['bits']}: {row['start_accuracy']:.3f} -> "
                           f"{row['accuracy']:.3f} ({row['seconds']:.0f} s)")
            except MpqlabError as err:
                row["error"] = f"{type(err).__name__}: {err}"
                log.append(f"h-swish grid {scheme}: {row['error']}")
            result["schemes"].append(row)
            print(log[-1], flush=True)
    result["seconds"] = time.perf_counter() - start
    result["timestamp"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if out is not None:
        atomic_write_json(out, result)
        log.append(f"total {result['seconds']:.0f} s on {result['threads']} thread(s), {result['timestamp']}")
        Path(out).with_suffix(".log").write_text("\n".join(log) + "\n")
    return result


def main(argv=None) -> None:
    parser = experiment_parser(__doc__, RESULTS)
    parser.add_argument("--phase-steps", type=int, default=Settings.phase_steps, help="SGD steps per phase")
    parser.add_argument("--scheme-steps", type=int, default=Settings.scheme_steps, help="steps per h-swish grid (0: skip)")
    parser.add_argument("--bits", type=int, nargs="+", default=list(Settings.bits), help="bit-widths to run")
    args = parse_experiment_args(parser, argv)
    settings = Settings(phase_steps=args.phase_steps, scheme_steps=args.scheme_steps, bits=tuple(args.bits))
    result = run(settings, out=args.out)
    report_written(args.out, result)


if __name__ == "__main__":
    main()
