"""Precompute notebook 03's fine-tuning results (Park, Ahn & Yoo, CVPR 2017, on our miniature).

Two studies on the shipped MobileNetV1-small, weights quantized only (activations stay in float):

1. *Methods at 2 and 3 bits*: weighted-entropy levels vs uniform (the workbook's per-channel
   symmetric min-max) vs equal-population clusters, each after post-training quantization (PTQ)
   and after a short fine-tune with the straight-through estimator. The first and last layers keep
   8-bit uniform weights, as most papers do.
2. *Layer sensitivity*: four per-layer bit-width profiles over the network's depth (``bit_profile``:
   DEC, INC, CONVEX, CONCAVE), every layer on weighted-entropy levels, all with the same mean of 3 bits.

Every configuration starts from the same checkpoint and is fine-tuned once per seed; a seed fixes the
data order, and every configuration runs with the same seeds, so the accuracies of one seed are paired and
the notebook compares configurations within pairs (``mpqlab.stats``). Run

    python -m mpqlab.experiments.weighted_entropy [--steps 100] [--seeds 0 1 2] [--eval-images N] [--out PATH]

to rewrite ``data/results/weighted_entropy.json`` after every finished configuration (one thread; the file
records the wall ``seconds`` and ``cpu_seconds``). A stopped run continues where it stopped if the settings
are the same.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from mpqlab.checkpoint import load_pretrained
from mpqlab.data import fashion_mnist_splits, make_loaders, repo_data_dir
from mpqlab.errors import PolicyError
from mpqlab.experiments.cli import (ResumableResult, experiment_parser, parse_experiment_args, report_written,
                                    result_header)
from mpqlab.quant.policy import quantizable_layers, quantize_model
from mpqlab.quant.quantizer import Quantizer
from mpqlab.quant.uniform import default_weight_quantizer, full_range_weight_quantizer
from mpqlab.quant.weighted_entropy import equal_population_levels, quantize_to_levels, we_weight_quantizer
from mpqlab.train import cosine_schedule, evaluate, seed_everything, train_epoch

RESULTS = repo_data_dir() / "results" / "weighted_entropy.json"
PROFILES = ("DEC", "INC", "CONVEX", "CONCAVE")


@dataclass
class Settings:
    model: str = "mobilenet_v1_small"  # shipped checkpoint to start from
    methods: tuple = ("uniform", "equal_population", "weighted_entropy")
    w_bits: tuple = (2, 3)  # weight bit-widths of study 1
    profiles: tuple = PROFILES  # study 2
    profile_bits: tuple = (2, 3, 4)  # low, middle, high bit-width of every profile
    first_last_bits: int = 8  # study 1: first conv and fc keep 8-bit uniform weights
    steps: int = 100  # fine-tune steps per configuration (batch 128: under a quarter of an epoch)
    lr: float = 0.01  # SGD, momentum 0.9, cosine decay to 0, no weight decay
    batch_size: int = 128
    eval_images: int | None = None  # test images to score on; None = all 10,000
    seeds: tuple = (0, 1, 2)  # each seed: one data order, the same for every configuration


class EqualPopulationWeightQuantizer(Quantizer):
    """Baseline of study 1: 2^(b-1) magnitude clusters of equal size, mirrored, each at its RMS sqrt(I_k)."""

    max_bits = 8

    def quantize_float(self, w: torch.Tensor) -> torch.Tensor:
        c = equal_population_levels(w, self.bits)
        return quantize_to_levels(w, c.levels, c.thresholds)


METHODS = {
    "uniform": default_weight_quantizer,  # restricted range: at 2 bits the ternary grid {-1, 0, 1} * max|w_c|
    "uniform_full_range": full_range_weight_quantizer,  # not in the study; notebook 03 compares its PTQ live
    "equal_population": lambda bits, name, layer: EqualPopulationWeightQuantizer(bits),
    "weighted_entropy": we_weight_quantizer,
}


def bit_profile(name: str, n_layers: int, bits: tuple = (2, 3, 4)) -> list[int]:
    """Per-layer w_bits over depth d = i / (n - 1): every profile uses the same bit-widths equally often.

    Layers are ranked by a shape score; the top third get ``bits[2]``, the bottom third ``bits[0]``,
    the rest ``bits[1]`` (ties go to the layer nearer the input), so the mean is the same for all:

        DEC: -d (high bits near the input)    INC: d (high bits near the output)
        CONVEX: |d - 1/2| (a U: high at both ends)    CONCAVE: -|d - 1/2| (high in the middle)
    """
    depth = np.arange(n_layers) / max(1, n_layers - 1)
    scores = {"DEC": -depth, "INC": depth, "CONVEX": np.abs(depth - 0.5), "CONCAVE": -np.abs(depth - 0.5)}
    if name not in scores:
        raise PolicyError(f"unknown profile {name!r}; choose one of {list(scores)}")
    order = sorted(range(n_layers), key=lambda i: (-scores[name][i], i))
    third = n_layers // 3
    profile = [bits[1]] * n_layers
    for i in order[:third]:
        profile[i] = bits[2]
    for i in order[n_layers - third:]:
        profile[i] = bits[0]
    return profile


def study_model(model, method: str, w_bits: int, first_last_bits: int):
    """Study 1: every layer's weights at ``w_bits`` by ``method``, first and last at 8-bit uniform."""
    names = quantizable_layers(model)
    keep = {names[0], names[-1]}

    def factory(bits, name, layer):
        return default_weight_quantizer(bits, name, layer) if name in keep else METHODS[method](bits, name, layer)

    policy = {name: (first_last_bits if name in keep else w_bits, None) for name in names}
    return quantize_model(model, policy, weight_quantizer=factory)


def profile_model(model, profile: str, bits: tuple = (2, 3, 4)):
    """Study 2: weighted-entropy weights with the profile's bit-width in every layer (first and last included)."""
    names = quantizable_layers(model)
    policy = {name: (b, None) for name, b in zip(names, bit_profile(profile, len(names), bits))}
    return quantize_model(model, policy, weight_quantizer=we_weight_quantizer)


def scoring_loader(splits, eval_images: int | None) -> DataLoader:
    x, y = splits.test.tensors
    n = len(x) if eval_images is None else eval_images
    return DataLoader(TensorDataset(x[:n], y[:n]), batch_size=1000)


def fine_tune_and_score(qmodel, settings: Settings, splits, device: str = "cpu", seed: int = 0) -> dict:
    """PTQ accuracy, then ``settings.steps`` STE steps on batches in ``seed``'s order, then the accuracy again."""
    start = time.perf_counter()
    scorer = scoring_loader(splits, settings.eval_images)
    ptq = evaluate(qmodel, scorer, device)
    seed_everything(seed)
    loader = make_loaders(splits, settings.batch_size, seed)["train"]
    optimizer = torch.optim.SGD(qmodel.parameters(), lr=settings.lr, momentum=0.9)
    loss = train_epoch(qmodel, loader, optimizer, device, cosine_schedule(optimizer, settings.steps),
                       max_steps=settings.steps, desc="fine-tune")
    return {"ptq_accuracy": ptq, "finetuned_accuracy": evaluate(qmodel, scorer, device),
            "mean_train_loss": loss, "seconds": time.perf_counter() - start}


def weight_kbit(qmodel) -> float:
    """Model size of the weights in kbit: sum over layers of params x w_bits."""
    return sum(m.weight.numel() * m.w_quantizer.bits for m in qmodel.modules() if hasattr(m, "w_quantizer")) / 1e3


def planned_runs(settings: Settings) -> list[tuple[str, str, int, int]]:
    """Every (study, method or profile, w_bits or 0, seed), seed by seed: a stopped run leaves whole seeds."""
    runs = []
    for seed in settings.seeds:
        runs += [("methods", method, w_bits, seed) for w_bits in settings.w_bits for method in settings.methods]
        runs += [("profiles", profile, 0, seed) for profile in settings.profiles]
    return runs


def run_key(study: str, row: dict) -> tuple[str, str, int, int]:
    return ((study, row["method"], row["w_bits"], row["seed"]) if study == "methods"
            else (study, row["profile"], 0, row["seed"]))


def run(settings: Settings, splits=None, device: str = "cpu", out: Path | None = RESULTS) -> dict:
    """Both studies for every seed; ``out`` (unless None) is rewritten atomically after each configuration.

    Configurations already in ``out`` from the same settings are kept, so a stopped precompute continues.
    """
    splits = splits or fashion_mnist_splits()
    fp_model = load_pretrained(settings.model, device)
    names = quantizable_layers(fp_model)
    header = result_header("weighted_entropy", settings)
    progress = ResumableResult(settings, out, header, lists=("methods", "profiles"))
    result = progress.result
    progress.keep("float_accuracy", lambda: evaluate(fp_model, scoring_loader(splits, settings.eval_images), device))
    result["layers"] = names
    todo = progress.remaining(planned_runs(settings), {run_key(study, row) for study in ("methods", "profiles")
                                                       for row in result[study]})
    for study, name, w_bits, seed in todo:
        if study == "methods":
            qmodel = study_model(fp_model, name, w_bits, settings.first_last_bits)
            row = {"method": name, "w_bits": w_bits, "seed": seed, "weight_kbit": weight_kbit(qmodel)}
        else:
            bits = bit_profile(name, len(names), settings.profile_bits)
            qmodel = profile_model(fp_model, name, settings.profile_bits)
            row = {"profile": name, "bits": bits, "seed": seed, "mean_bits": float(np.mean(bits)),
                   "weight_kbit": weight_kbit(qmodel)}
        result[study].append(row | fine_tune_and_score(qmodel, settings, splits, device, seed))
        progress.save()
        print(f"seed {seed} {name:>17s}{f' W{w_bits}' if w_bits else ''}: {result[study][-1]}", flush=True)
    return progress.finish()


def main(argv=None) -> None:
    parser = experiment_parser(__doc__, RESULTS)
    parser.add_argument("--steps", type=int, default=Settings.steps, help="fine-tune steps per configuration")
    parser.add_argument("--eval-images", type=int, default=None, help="score on the first N test images (default all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(Settings.seeds),
                        help="seeds (data order), the same for every configuration")
    args = parse_experiment_args(parser, argv)
    result = run(Settings(steps=args.steps, eval_images=args.eval_images, seeds=tuple(args.seeds)), out=args.out)
    report_written(args.out, result)


if __name__ == "__main__":
    main()
