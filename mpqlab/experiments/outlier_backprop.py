"""Precompute notebook 04's quantized back-propagation study: train MobileNetV1-small from scratch with the
activations saved for backward in float, as 3-bit codes plus 2% outliers, and as 3-bit codes without
outliers, over paired seeds, and score every run on the full test set.

Quantized back-propagation (Park, Yoo, Vajda, ECCV 2018): the forward pass stays in full precision; only
the copies of the post-ReLU activations that autograd keeps for the backward pass are stored as b-bit codes
(``mpqlab.quant.outlier.compress_for_backward``), so the weight gradients dL/dW = delta * a^T use a
slightly wrong a. Three configurations (``CONFIGS``):

    float        autograd keeps the float activations (the reference)
    outliers     3-bit codes, the top ``ratio`` (2%) of the non-zero values kept in float
    no_outliers  3-bit codes, ratio 0: a plain linear grid up to the tensor's maximum

In every compressed configuration positive values below half a step are stored on the first level, not 0,
so that the ReLU mask [a > 0] is exact: that is the workbook's device, not the paper's.

A seed fixes the initialisation and the order of the batches; every configuration runs with the same seeds,
so the runs of one seed are paired and the notebook compares configurations within pairs (``mpqlab.stats``).
Each run takes ``steps`` SGD steps of 64 images and is then scored on the full test set (10,000 images);
a validation curve on the first ``val_images`` validation images is kept along the way.

Budget: the compressed runs cost 3 to 4 times a float step (threshold by order statistic and rounding of
every saved tensor, in plain PyTorch), so 9 runs had to fit about 20 minutes of one thread. Timed on this
machine: about 0.15 s per float step, 0.45 to 0.6 s per compressed step, 12 s per test-set scoring. We chose
250 steps (16,000 images, 29% of one epoch), twice the 120 steps of the earlier single-seed run: a
tiny training budget next to the paper's ImageNet runs. The training runs hold the decompressed values
directly (``RoundTripSavedActivations``: the same numbers ``CompressedSavedActivations`` gives back,
checked by a test) because bit-packing in plain PyTorch made each step another 3 times slower; the bytes
are measured with the real packing (``saved_bytes``, on the shipped checkpoint).

    python -m mpqlab.experiments.outlier_backprop [--steps 250] [--seeds 0 1 2] [--out PATH]

rewrites ``data/results/outlier_backprop.json`` after every finished run (one thread; the file records the
seconds it took). A stopped run continues where it stopped if the settings are the same.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from mpqlab.checkpoint import load_pretrained
from mpqlab.data import fashion_mnist_splits, make_loaders, repo_data_dir
from mpqlab.errors import UsageError, check_bits, check_fraction
from mpqlab.experiments.cli import (ResumableResult, experiment_parser, parse_experiment_args, report_written,
                                    result_header)
from mpqlab.models import build_model
from mpqlab.qat import subset_loader
from mpqlab.quant.outlier import CompressedSavedActivations, outlier_threshold, q_max_for
from mpqlab.train import cosine_schedule, evaluate, repeat_epochs, seed_everything

RESULTS = repo_data_dir() / "results" / "outlier_backprop.json"
CONFIGS = {"float": "float saved activations", "outliers": "3 bits + 2% outliers",
           "no_outliers": "3 bits, no outliers"}


@dataclass
class Settings:
    model: str = "mobilenet_v1_small"  # architecture, trained from a seeded random initialisation
    bits: int = 3  # saved activations: b-bit codes ...
    ratio: float = 0.02  # ... plus this share of the non-zero values kept in float ("outliers" configuration)
    configs: tuple = ("float", "outliers", "no_outliers")  # keys of CONFIGS
    steps: int = 250  # SGD steps per run (one epoch is 859 steps of 64 images)
    batch_size: int = 64
    lr: float = 0.1  # SGD, Nesterov momentum 0.9, linear warm-up then cosine decay to 0
    warmup: int = 20
    weight_decay: float = 4e-5  # as for the shipped checkpoint
    eval_every: int = 50  # a point on the validation curve every eval_every steps (make steps a multiple)
    val_images: int = 1000  # first N validation images, for the curve
    eval_images: int = 10_000  # first N test images (all of them), scored once at the end of each run
    memory_images: int = 64  # batch of the step whose saved bytes are measured
    seeds: tuple = (0, 1, 2)  # each seed: initialisation and batch order, the same for every configuration


def config_ratio(config: str, settings: Settings) -> float | None:
    """The outlier ratio of a configuration's saved activations: None (float), settings.ratio, or 0."""
    if config not in CONFIGS:
        raise UsageError(f"unknown configuration {config!r}; allowed: {', '.join(CONFIGS)}")
    return {"float": None, "outliers": settings.ratio, "no_outliers": 0.0}[config]


def round_trip(x: torch.Tensor, bits: int, ratio: float) -> torch.Tensor:
    """decompress(compress_for_backward(x, bits, ratio)) without the bit-packing, for a non-negative x.

        t = outlier_threshold(x, ratio)  (= max x when ratio = 0),   scale = t / (2^b - 1)
        x_hat = x where x > t, else clamp(round(x / scale), 0, 2^b - 1) * scale,
        with code 1 instead of 0 for 0 < x < scale / 2 (the workbook's device: the ReLU mask survives)
    """
    x = x.detach()
    # ratio 0 keeps the maximum as the top level; max is the same order statistic, without kthvalue's cost
    t = float(x.max()) if ratio == 0 else outlier_threshold(x, ratio, signed=False)
    q_max = q_max_for(bits, signed=False)
    scale = t / q_max
    codes = torch.round(x / (scale or 1.0)).clamp(0, q_max)
    codes = torch.where((x > 0) & (codes == 0), torch.ones_like(codes), codes)
    return torch.where(x > t, x, codes * scale)


class RoundTripSavedActivations:
    """Context manager: what ``CompressedSavedActivations`` does to the values autograd saves for backward,
    without holding packed bytes. The same tensors are selected (non-negative, floating, at least
    ``min_numel`` values, not parameters) and replaced by ``round_trip``; a tensor saved twice in one forward
    pass (a ReLU output and the next conv's input) is rounded once. Use it to train fast; use
    ``CompressedSavedActivations`` to measure memory.
    """

    def __init__(self, bits: int = 3, ratio: float = 0.02, min_numel: int = 1024):
        self.bits, self.ratio = check_bits(bits, high=8), check_fraction(ratio, name="ratio")
        self.min_numel = min_numel
        self.n_rounded = 0
        self._cache: dict = {}

    def _pack(self, t: torch.Tensor):
        is_weight = isinstance(t, nn.Parameter) or isinstance(t._base, nn.Parameter)
        if is_weight or not t.is_floating_point() or t.numel() < self.min_numel or bool((t < 0).any()):
            return t
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if key not in self._cache:
            # the original is kept in the entry so that its memory, hence the key, cannot be reused meanwhile
            self._cache[key] = (t, round_trip(t, self.bits, self.ratio))
            self.n_rounded += 1
        return self._cache[key][1]

    def __enter__(self) -> "RoundTripSavedActivations":
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda p: p)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        self._cache.clear()  # the backward pass holds the rounded tensors it needs


def _is_parameter(t: torch.Tensor) -> bool:
    return isinstance(t, nn.Parameter) or isinstance(t._base, nn.Parameter)


def saved_bytes(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, bits: int = 3,
                ratio: float = 0.02) -> dict:
    """Bytes autograd holds for the backward pass of one training step, in float and compressed.

    Float: every saved tensor that is not a parameter, counted once per storage (a ReLU output that the
    next conv saves again is one tensor in memory). ``relu_float`` is the part that
    ``CompressedSavedActivations`` would compress (non-negative, at least 1024 values), ``other_float`` the
    rest (mostly batch norm's signed inputs). Compressed: ``relu_held`` is what the compressed copies take
    (the class compresses a tensor each time it is saved: ``relu_saves`` copies of ``relu_tensors``
    tensors, ``relu_saved_float`` bytes in float), ``total_held`` = relu_held + other_float.
    """
    model = copy.deepcopy(model)  # the two training-mode passes would move batch norm's running statistics
    storages: dict[int, tuple[int, bool]] = {}

    def count(t):
        if not _is_parameter(t):
            relu_like = t.is_floating_point() and t.numel() >= 1024 and not bool((t < 0).any())
            storages[t.untyped_storage().data_ptr()] = (t.numel() * t.element_size(), relu_like)
        return t

    model.train()
    criterion = nn.CrossEntropyLoss()
    with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
        loss = criterion(model(images), labels)
    loss.backward()
    with CompressedSavedActivations(bits, ratio) as saved:
        loss = criterion(model(images), labels)
    loss.backward()
    model.zero_grad(set_to_none=True)
    relu_float = sum(n for n, relu in storages.values() if relu)
    other_float = sum(n for n, relu in storages.values() if not relu)
    return {"relu_float": relu_float, "other_float": other_float, "relu_held": saved.held_bytes,
            "relu_saved_float": saved.full_bytes,
            "relu_saves": saved.n_compressed, "relu_tensors": sum(relu for _, relu in storages.values()),
            "total_float": relu_float + other_float, "total_held": saved.held_bytes + other_float}


def _score(model: nn.Module, loader, device: str) -> float:
    with torch.no_grad():  # scoring needs no graph; without this every batch would build one
        return evaluate(model, loader, device)


def train_run(settings: Settings, splits, config: str, seed: int = 0, device: str = "cpu",
              steps: int | None = None) -> dict:
    """Train ``config`` from the initialisation of ``seed`` for ``steps`` (default ``settings.steps``) steps
    of the schedule, then score it on the first ``settings.eval_images`` test images.

    Returns the loss of every step, the validation curve, the test accuracy and the seconds taken.
    """
    ratio = config_ratio(config, settings)
    steps = settings.steps if steps is None else steps
    seed_everything(seed)
    model = build_model(settings.model).to(device)
    batches = repeat_epochs(make_loaders(splits, settings.batch_size, seed)["train"])
    curve_loader = subset_loader(splits.val, settings.val_images)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=0.9, nesterov=True,
                                weight_decay=settings.weight_decay)
    scheduler = cosine_schedule(optimizer, settings.steps, settings.warmup)
    criterion = nn.CrossEntropyLoss()
    losses, curve_steps, curve = [], [], []
    start = time.perf_counter()
    for step in tqdm(range(1, steps + 1), desc=f"{config}, seed {seed}", leave=False):
        images, labels = next(batches)
        model.train()
        saving = contextlib.nullcontext() if ratio is None else RoundTripSavedActivations(settings.bits, ratio)
        with saving:  # only the forward pass saves tensors; backward reads them back through the same hooks
            loss = criterion(model(images.to(device)), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % settings.eval_every == 0:
            curve_steps.append(step)
            curve.append(_score(model, curve_loader, device))
    accuracy = _score(model, subset_loader(splits.test, settings.eval_images), device)
    return {"config": config, "ratio": ratio, "seed": seed, "steps": steps, "accuracy": accuracy,
            "losses": losses, "curve_steps": curve_steps, "val_accuracy": curve,
            "seconds": time.perf_counter() - start}


def planned_runs(settings: Settings) -> list[tuple[str, int]]:
    """Every (config, seed), seed by seed, so a stopped precompute leaves whole seeds behind it."""
    for config in settings.configs:
        config_ratio(config, settings)  # an unknown name fails before any training
    return [(config, seed) for seed in settings.seeds for config in settings.configs]


def run(settings: Settings, splits=None, device: str = "cpu", out: Path | None = RESULTS) -> dict:
    """The memory measurement and every (config, seed) run; ``out`` (unless None) is rewritten after each run.

    Runs already in ``out`` from the same settings are kept, so a stopped precompute continues.
    """
    splits = splits or fashion_mnist_splits()
    header = result_header("outlier_backprop", settings)
    progress = ResumableResult(settings, out, header)
    result = progress.result

    def measure_memory():
        images, labels = splits.train.tensors
        pretrained = load_pretrained(settings.model, device)
        return saved_bytes(pretrained, images[:settings.memory_images].to(device),
                           labels[:settings.memory_images].to(device), settings.bits, settings.ratio)

    progress.keep("memory", measure_memory)
    for config, seed in progress.remaining(planned_runs(settings), {(r["config"], r["seed"]) for r in result["runs"]}):
        row = train_run(settings, splits, config, seed, device)
        result["runs"].append(row)
        progress.save()
        print(f"seed {seed}, {CONFIGS[config]}: test accuracy {row['accuracy']:.4f} after {row['steps']} steps "
              f"({row['seconds']:.0f} s)", flush=True)
    return progress.finish()


def main(argv=None) -> None:
    parser = experiment_parser(__doc__, RESULTS)
    parser.add_argument("--steps", type=int, default=Settings.steps, help="training steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(Settings.seeds),
                        help="seeds (initialisation and batch order), the same for every configuration")
    args = parse_experiment_args(parser, argv)
    result = run(Settings(steps=args.steps, seeds=tuple(args.seeds)), out=args.out)
    report_written(args.out, result)


if __name__ == "__main__":
    main()
