"""Precompute notebook 07's PROFIT runs: progressive freezing vs. none on the MobileNetV3-style net, over seeds.

Every run starts from the shipped ``mobilenet_v3_small`` checkpoint, quantizes it with LSQ (first conv and
classifier at 8 bits, h-swish outputs on the shifted grid, ``mpqlab.profit.build_profit_model``), initialises
the LSQ steps and re-estimates batch norm on ``calib_images`` training images, and trains for four phases of
``phase_steps`` SGD steps. Batch norm keeps training (its running statistics are what we watch). The last
``aiwq_steps`` steps of each phase also measure every trainable layer's AIWQ. With ``freeze`` on, the next
phase first freezes the layers with the largest AIWQ: a third of them, then two thirds, then everything but
batch norm (PROFIT). Without it, all layers train in every phase.

A second, smaller part fine-tunes the three h-swish grids (unsigned, signed, shifted) for ``scheme_steps``.

**Seeds.** A seed picks the calibration images and the order of the training batches; every configuration
runs with the same seeds, so the runs of one seed are *paired* and the notebook compares configurations
within pairs (``mpqlab.stats``). ``start_accuracy`` (after calibration, before training) and ``accuracy``
(after the last phase) are scored on all ``eval_images`` test images (the full 10,000); the accuracy after
each phase, drawn as a curve, on the first ``curve_images`` only (a cheap trend, not a result).

**Budget** (about 28 min of one core: 27.6 min CPU, 30.6 min wall next to other jobs): the freezing comparison runs at W3A3 only, where the paper's
claim (sub-4-bit MobileNets) is made; W4A4 ran once before the seeds (one seed, 1,000 test images, no
difference either) and was dropped to pay for the seeds and the full test set. The runs are short next to
the paper's (4 x 150 steps of 128 images = 1.4 epochs): see the notebook for what that does and does not show.

    python -m mpqlab.experiments.profit [--phase-steps 150] [--bits 3] [--seeds 0 1 2] [--out PATH]

rewrites ``data/results/profit.json`` and a ``.log`` beside it after every finished run (one thread; both
record the wall ``seconds``, the file also ``cpu_seconds``, each adding up over resumed sessions). A stopped
run continues where it stopped if the settings are the same; ``complete`` says whether every run is in.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mpqlab.checkpoint import load_pretrained
from mpqlab.data import calibration_batch, fashion_mnist_splits, repo_data_dir
from mpqlab.errors import MpqlabError
from mpqlab.experiments.cli import (ResumableResult, experiment_parser, parse_experiment_args, report_written,
                                    result_header)
from mpqlab.profit import (aiwq_step, bn_fluctuation, bn_only, bn_running_means, build_profit_model, conv_role,
                           freeze_layers, layers_to_freeze, quant_layers)
from mpqlab.qat import param_groups, recalibrate_bn, subset_loader
from mpqlab.stats import seed_values  # noqa: F401  (notebook 07 imports it from here)
from mpqlab.train import cosine_schedule, evaluate, repeat_epochs, seed_everything

RESULTS = repo_data_dir() / "results" / "profit.json"
PHASES = (("all layers train", 0.0), ("1/3 frozen", 1 / 3), ("2/3 frozen", 2 / 3), ("BN only", None))
SCHEMES = ("unsigned", "signed", "shifted")


@dataclass
class Settings:
    model: str = "mobilenet_v3_small"  # shipped checkpoint every run starts from
    bits: tuple = (3,)  # W{b}A{b} of the freezing comparison; first conv and fc stay at first_last_bits
    first_last_bits: int = 8
    phase_steps: int = 150  # SGD steps per phase; 4 phases = 600 steps, 1.4 epochs (an epoch is 429 steps)
    aiwq_steps: int = 3  # the last steps of each phase also measure AIWQ (averaged)
    scheme_steps: int = 20  # fine-tune steps for each h-swish grid (0: skip that part)
    scheme_bits: int = 3
    lr: float = 0.01  # network weights: SGD, momentum 0.9, cosine decay over all phases, no weight decay
    quant_lr: float = 0.001  # LSQ step sizes
    batch_size: int = 128
    calib_images: int = 1024  # initialise LSQ steps and re-estimate batch norm on these training images (by seed)
    eval_images: int = 10_000  # first N test images (all of them): start and final accuracy
    curve_images: int = 1000  # first N test images, scored after every phase (the curve only)
    seeds: tuple = (0, 1, 2)  # each seed: calibration images and batch order, the same for every configuration


def prepare(fp_model, bits: int, settings: Settings, splits, scheme: str = "shifted", device: str = "cpu",
            seed: int = 0):
    """The quantized model with LSQ steps initialised and batch norm re-estimated on ``seed``'s training images."""
    seed_everything(seed)
    qmodel = build_profit_model(fp_model, bits, scheme, settings.first_last_bits).to(device)
    x, _ = calibration_batch(splits, settings.calib_images, seed)
    x = x.to(device)
    qmodel.eval()
    with torch.no_grad():
        qmodel(x[:256])  # LSQ's lazy step initialisation
    recalibrate_bn(qmodel, x, device=device)
    return qmodel


def _batches(splits, settings: Settings, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return repeat_epochs(DataLoader(splits.train, batch_size=settings.batch_size, shuffle=True, generator=generator,
                                    drop_last=True))


def run_schedule(fp_model, bits: int, freeze: bool, settings: Settings, splits, scheme: str = "shifted",
                 phases=PHASES, device: str = "cpu", seed: int = 0) -> dict:
    """Train one quantized model through ``phases``, freezing by AIWQ between them if ``freeze``.

    ``start_accuracy`` and ``accuracy`` are on ``settings.eval_images`` test images, each phase's
    ``accuracy`` (and ``start_curve_accuracy``) on the first ``settings.curve_images``.
    """
    start = time.perf_counter()
    qmodel = prepare(fp_model, bits, settings, splits, scheme, device, seed)
    scorer = subset_loader(splits.test, settings.eval_images)
    curve = subset_loader(splits.test, settings.curve_images)
    row = {"bits": bits, "freeze": freeze, "scheme": scheme, "seed": seed,
           "start_accuracy": evaluate(qmodel, scorer, device), "start_curve_accuracy": evaluate(qmodel, curve, device),
           "phases": []}
    optimizer = torch.optim.SGD(param_groups(qmodel, settings.lr, settings.quant_lr), momentum=0.9)
    scheduler = cosine_schedule(optimizer, settings.phase_steps * len(phases))
    batches, scores, frozen = _batches(splits, settings, seed), {}, []
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
        for step in tqdm(range(settings.phase_steps), desc=f"seed {seed} W{bits}A{bits} {title}", leave=False):
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
                              "train_loss": sum(losses) / len(losses), "accuracy": evaluate(qmodel, curve, device),
                              "bn_fluctuation": bn_fluctuation(history, qmodel) if len(history) > 1 else None,
                              "aiwq": phase_aiwq, "aiwq_float_weights": phase_fp})
    row["accuracy"] = evaluate(qmodel, scorer, device)
    row["seconds"] = time.perf_counter() - start
    return row


def planned_runs(settings: Settings) -> list[tuple]:
    """Every ("freezing", bits, freeze, seed) and ("scheme", scheme_bits, scheme, seed), seed by seed, so a
    stopped precompute leaves whole seeds behind it."""
    runs = []
    for seed in settings.seeds:
        runs += [("freezing", bits, freeze, seed) for bits in settings.bits for freeze in (False, True)]
        if settings.scheme_steps:
            runs += [("scheme", settings.scheme_bits, scheme, seed) for scheme in SCHEMES]
    return runs


def run_key(row: dict) -> tuple:
    """The ``planned_runs`` key of a stored row (of ``runs`` or of ``schemes``)."""
    if "freeze" in row:
        return ("freezing", row["bits"], row["freeze"], row["seed"])
    return ("scheme", row["bits"], row["scheme"], row["seed"])


def one_run(fp_model, key: tuple, settings: Settings, splits, device: str = "cpu") -> dict:
    """One planned run; an MpqlabError (e.g. a step size driven below zero) is recorded as the row's ``error``."""
    study, bits, what, seed = key
    row = ({"bits": bits, "freeze": what, "seed": seed} if study == "freezing"
           else {"bits": bits, "scheme": what, "seed": seed})
    try:
        if study == "freezing":
            return run_schedule(fp_model, bits, what, settings, splits, device=device, seed=seed)
        one = Settings(**{**asdict(settings), "phase_steps": settings.scheme_steps, "aiwq_steps": 0})
        done = run_schedule(fp_model, bits, False, one, splits, what, phases=(("all layers train", 0.0),),
                            device=device, seed=seed)
        return row | {k: done[k] for k in ("start_accuracy", "accuracy", "seconds")}
    except MpqlabError as err:  # a result too: the notebook says which run failed
        return row | {"error": f"{type(err).__name__}: {err}"}


def log_line(row: dict) -> str:
    """One line of the .log for a finished run."""
    if "freeze" in row:
        name = f"seed {row['seed']} W{row['bits']}A{row['bits']} freeze={row['freeze']}"
        if "error" in row:
            return f"{name}: {row['error']}"
        curve = " -> ".join(f"{p['accuracy']:.3f}" for p in row["phases"])
        return (f"{name}: {row['start_accuracy']:.4f} -> {row['accuracy']:.4f} (curve on the first images: "
                f"{row['start_curve_accuracy']:.3f} -> {curve}) ({row['seconds']:.0f} s)")
    name = f"seed {row['seed']} h-swish grid {row['scheme']} W{row['bits']}A{row['bits']}"
    if "error" in row:
        return f"{name}: {row['error']}"
    return f"{name}: {row['start_accuracy']:.4f} -> {row['accuracy']:.4f} ({row['seconds']:.0f} s)"


def write_log(result: dict, out: Path) -> None:
    """The .log beside ``out``, rebuilt from the result (so a resumed run logs every run, old and new)."""
    lines = [f"float accuracy {result['float_accuracy']:.4f} on {result['settings']['eval_images']} test images"]
    lines += [log_line(row) for row in result["runs"] + result["schemes"]]
    state = "complete" if result["complete"] else "incomplete"
    lines.append(f"{state}: {result['seconds']:.0f} s wall, {result['cpu_seconds']:.0f} s CPU on "
                 f"{result['threads']} thread(s), {result.get('timestamp', 'not finished')}")
    Path(out).with_suffix(".log").write_text("\n".join(lines) + "\n")


def run(settings: Settings, splits=None, device: str = "cpu", out: Path | None = RESULTS) -> dict:
    """Every planned run; ``out`` (and its .log) are rewritten atomically after each one (unless ``out`` is None).

    Runs already in ``out`` from the same settings are kept, so a stopped precompute continues.
    """
    splits = splits or fashion_mnist_splits()
    fp_model = load_pretrained(settings.model, device)
    layers = quant_layers(build_profit_model(fp_model, 4, first_last_bits=settings.first_last_bits))
    header = result_header("profit", settings,
                           layers=[{"name": n, "role": conv_role(m), "depth": i} for i, (n, m) in enumerate(layers.items())])
    progress = ResumableResult(settings, out, header, lists=("runs", "schemes"))
    result = progress.result
    progress.keep("float_accuracy", lambda: evaluate(fp_model, subset_loader(splits.test, settings.eval_images), device))

    def save():
        progress.save()
        if out is not None:
            write_log(result, out)

    for key in progress.remaining(planned_runs(settings), {run_key(row) for row in result["runs"] + result["schemes"]}):
        row = one_run(fp_model, key, settings, splits, device)
        result["runs" if key[0] == "freezing" else "schemes"].append(row)
        save()
        print(log_line(row), flush=True)
    progress.finish()
    if out is not None:
        write_log(result, out)
    return result


def main(argv=None) -> None:
    parser = experiment_parser(__doc__, RESULTS)
    parser.add_argument("--phase-steps", type=int, default=Settings.phase_steps, help="SGD steps per phase")
    parser.add_argument("--scheme-steps", type=int, default=Settings.scheme_steps, help="steps per h-swish grid (0: skip)")
    parser.add_argument("--bits", type=int, nargs="+", default=list(Settings.bits), help="bit-widths to run")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(Settings.seeds),
                        help="seeds (calibration images and batch order), the same for every configuration")
    args = parse_experiment_args(parser, argv)
    settings = Settings(phase_steps=args.phase_steps, scheme_steps=args.scheme_steps, bits=tuple(args.bits),
                        seeds=tuple(args.seeds))
    result = run(settings, out=args.out)
    report_written(args.out, result)


if __name__ == "__main__":
    main()
