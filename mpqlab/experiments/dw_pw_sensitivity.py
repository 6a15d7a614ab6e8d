"""Precompute notebook 09's depthwise / pointwise sensitivity runs (LIMPQ, Tang et al. ECCV 2022, Figure 2).

On the shipped MobileNetV1-small, for the depthwise and the pointwise conv of 5 pairs spread over
the depth, quantize that one conv (weights and input activations, LSQ) at 4 and at 2 bits, leave
everything else in full precision, fine-tune briefly, and record the learned step sizes and the
accuracy: 5 pairs x 2 convs x 2 bit-widths = 20 runs per seed, each seed repeated (default 3 seeds).

Fine-tune: SGD (momentum 0.9, cosine decay to 0) on all the network's weights plus the quantized
layer's two step sizes, ``steps`` batches of 128 (a tiny fraction of an epoch). The seed fixes the
order of the training batches and the calibration images that set LSQ's initial steps. A *control
run* per seed fine-tunes the float model with the same recipe and the same batches; its accuracy is
the reference for that seed's runs, so the fine-tune itself is not counted as quantization damage.
Accuracy is measured on the whole test set (10,000 images) unless ``eval_images`` says otherwise.

The result file is rewritten (atomically) after every finished run. Started again with the same
settings, the script keeps the runs already in the file and does only the missing ones; with
different settings it starts afresh. The statistics across seeds are in ``mpqlab.limpq.sensitivity``
(``drop_by_layer``, ``dw_minus_pw_extra_loss``, ``step_ratio_summary``).

    python -m mpqlab.experiments.dw_pw_sensitivity [--seeds 0 1 2] [--steps 40] [--eval-images 0] [--out PATH]

writes ``data/results/dw_pw_sensitivity.json`` (one thread; the file records its ``seconds``).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from mpqlab.checkpoint import load_pretrained
from mpqlab.data import calibration_batch, fashion_mnist_splits, make_loaders, repo_data_dir
from mpqlab.errors import UsageError
from mpqlab.experiments.cli import (ResumableResult, experiment_parser, parse_experiment_args, report_written,
                                    result_header)
from mpqlab.limpq.sensitivity import initialize_steps, layer_steps, quantize_single_layer
from mpqlab.train import cosine_schedule, evaluate, seed_everything, train_epoch

RESULTS = repo_data_dir() / "results" / "dw_pw_sensitivity.json"


@dataclass
class Settings:
    model: str = "mobilenet_v1_small"  # shipped checkpoint to start from
    pairs: tuple = (1, 4, 7, 10, 13)  # depthwise-separable pairs spread over the depth (of 13)
    bits: tuple = (4, 2)  # weights and input activations of the one quantized conv
    steps: int = 40  # fine-tune batches per run (batch 128: about 1/10 of an epoch)
    lr: float = 0.01  # SGD for weights and step sizes alike (LSQ's gradient scale balances them)
    batch_size: int = 128
    calibration_images: int = 512  # training images that set LSQ's initial steps
    eval_images: int | None = None  # first N test images score every run; None = all 10,000
    seeds: tuple = (0, 1, 2)  # each seed: its own batch order and calibration images, and its own control run


def scoring_loader(splits, eval_images: int | None) -> DataLoader:
    """The fixed test images every run is scored on (all of them when ``eval_images`` is None)."""
    x, y = splits.test.tensors
    n = len(x) if eval_images is None else eval_images
    return DataLoader(TensorDataset(x[:n], y[:n]), batch_size=1000)


def fine_tune(model, settings: Settings, splits, device: str = "cpu", seed: int = 0) -> float:
    """``settings.steps`` SGD steps on the training batches drawn with ``seed``; returns the mean training loss."""
    seed_everything(seed)
    loader = make_loaders(splits, settings.batch_size, seed)["train"]
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=0.9)
    return train_epoch(model, loader, optimizer, device, cosine_schedule(optimizer, settings.steps),
                       max_steps=settings.steps, desc="fine-tune")


def control_run(fp_model, settings: Settings, splits, device: str = "cpu", seed: int = 0) -> dict:
    """The float model fine-tuned with the same recipe and ``seed``: the reference accuracy of that seed's runs."""
    start = time.perf_counter()
    model = copy.deepcopy(fp_model)
    scorer = scoring_loader(splits, settings.eval_images)
    before = evaluate(model, scorer, device)
    loss = fine_tune(model, settings, splits, device, seed)
    return {"seed": seed, "accuracy_before": before, "accuracy": evaluate(model, scorer, device),
            "mean_train_loss": loss, "seconds": time.perf_counter() - start}


def single_layer_run(fp_model, layer: str, bits: int, settings: Settings, splits, device: str = "cpu",
                     seed: int = 0) -> dict:
    """Quantize ``layer`` alone at ``bits``, fine-tune with ``seed``, and record steps and accuracy before and after."""
    start = time.perf_counter()
    model = quantize_single_layer(fp_model, layer, bits).to(device)
    images, _ = calibration_batch(splits, settings.calibration_images, seed)
    initialize_steps(model, images.to(device))  # LSQ's initial steps from training images, not from the test set
    init = layer_steps(model, layer)
    scorer = scoring_loader(splits, settings.eval_images)
    ptq = evaluate(model, scorer, device)
    loss = fine_tune(model, settings, splits, device, seed)
    learned = layer_steps(model, layer)
    kind = "depthwise" if layer.startswith("dw") else "pointwise"
    return {"layer": layer, "pair": int(layer.split(".")[0][2:]), "kind": kind, "bits": bits, "seed": seed,
            "w_step": learned["w_step"], "a_step": learned["a_step"],
            "w_step_init": init["w_step"], "a_step_init": init["a_step"],
            "w_step_ratio": learned["w_step"] / init["w_step"], "a_step_ratio": learned["a_step"] / init["a_step"],
            "ptq_accuracy": ptq, "accuracy": evaluate(model, scorer, device),
            "mean_train_loss": loss, "seconds": time.perf_counter() - start}


def check_settings(settings: Settings) -> Settings:
    """UsageError unless there is something to run and every (layer, bits, seed) names one run."""
    seeds = list(settings.seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"seeds must be a non-empty list of distinct integers, got {seeds}")
    if not settings.pairs or not settings.bits:
        raise UsageError(f"pairs and bits must be non-empty, got pairs={settings.pairs}, bits={settings.bits}")
    if settings.steps < 1:
        raise UsageError(f"steps must be at least 1, got {settings.steps}")
    if settings.eval_images is not None and settings.eval_images < 1:
        raise UsageError(f"eval_images must be a positive number of test images or None (all 10,000), "
                         f"got {settings.eval_images}")
    return settings


def planned_runs(settings: Settings) -> list[tuple[str, int, int]]:
    """Every (layer, bits, seed) to run, seed by seed, so a stopped precompute leaves whole seeds behind it."""
    return [(f"{kind}{pair}.conv", bits, seed) for seed in settings.seeds for pair in settings.pairs
            for kind in ("dw", "pw") for bits in settings.bits]


def run(settings: Settings, splits=None, device: str = "cpu", out: Path | None = RESULTS) -> dict:
    """One control run and the 20 single-layer runs per seed; ``out`` (unless None) is rewritten after each.

    Runs already in ``out`` from the same settings (same layer, bits and seed; controls per seed) are kept.
    """
    check_settings(settings)
    header = result_header("dw_pw_sensitivity", settings)
    progress = ResumableResult(settings, out, header, lists=("controls", "runs"))
    saved, result, save = progress.saved, progress.result, progress.save
    done_controls = {c["seed"] for c in result["controls"]}
    done_runs = {(r["layer"], r["bits"], r["seed"]) for r in result["runs"]}
    todo = [key for key in planned_runs(settings) if key not in done_runs]
    if saved and saved.get("complete") and not todo and done_controls >= set(settings.seeds):
        print(f"{out} already holds every run with these settings: nothing to do", flush=True)
        return saved
    if saved:
        print(f"resuming {out}: {len(done_controls)} control runs and {len(done_runs)} single-layer runs kept, "
              f"{len(todo)} single-layer runs to go", flush=True)

    splits = splits or fashion_mnist_splits()
    fp_model = load_pretrained(settings.model, device)
    for seed in settings.seeds:
        if seed not in done_controls:
            control = control_run(fp_model, settings, splits, device, seed)
            result["controls"].append(control)
            save()
            print(f"seed {seed} control: acc {control['accuracy']:.4f}, {control['seconds']:.0f} s", flush=True)
        for layer, bits, _ in [key for key in todo if key[2] == seed]:
            row = single_layer_run(fp_model, layer, bits, settings, splits, device, seed)
            result["runs"].append(row)
            save()
            print(f"seed {seed} {layer:>10s} {bits} bits: acc {row['accuracy']:.4f} (PTQ {row['ptq_accuracy']:.4f}), "
                  f"s_w {row['w_step']:.4g}, s_a {row['a_step']:.4g}, {row['seconds']:.0f} s", flush=True)
    return progress.finish()


def main(argv=None) -> None:
    parser = experiment_parser(__doc__, RESULTS)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(Settings.seeds),
                        help="seeds to repeat every run with (default 0 1 2)")
    parser.add_argument("--steps", type=int, default=Settings.steps, help="fine-tune steps per run")
    parser.add_argument("--eval-images", type=int, default=0,
                        help="score on the first N test images (default 0 = all 10,000)")
    args = parse_experiment_args(parser, argv)
    settings = Settings(steps=args.steps, eval_images=args.eval_images or None, seeds=tuple(args.seeds))
    result = run(settings, out=args.out)
    report_written(args.out, result)


if __name__ == "__main__":
    main()
