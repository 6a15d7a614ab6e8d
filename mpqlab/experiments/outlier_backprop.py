"""Precompute notebook 04's quantized back-propagation run: train MobileNetV1-small from scratch twice,
once normally and once with the activations saved for backward held as 3-bit codes plus 2% outliers.

Quantized back-propagation (Park, Yoo, Vajda, ECCV 2018): the forward pass stays in full precision; only
the copies of the post-ReLU activations that autograd keeps for the backward pass are compressed
(``mpqlab.quant.outlier.CompressedSavedActivations``), so the weight gradients dL/dW = delta * a^T use
a slightly wrong a. Both runs start from the same seeded initialisation and see the same batches. They
are short: ``steps`` SGD steps of 64 images (120 steps = 7,680 images, 14% of one epoch), because the
compression, written in plain PyTorch for reading rather than speed, makes every step several times slower.

The script also measures the bytes held for backward in one training step of the shipped checkpoint
(``saved_bytes``), which the notebook repeats live.

    python -m mpqlab.experiments.outlier_backprop [--steps 120] [--out PATH]

rewrites ``data/results/outlier_backprop.json`` (one thread; the file records the seconds it took).
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from mpqlab.checkpoint import load_pretrained
from mpqlab.data import fashion_mnist_splits, make_loaders, repo_data_dir
from mpqlab.experiments.cli import experiment_parser, finish_result, parse_experiment_args, report_written
from mpqlab.models import build_model
from mpqlab.qat import subset_loader
from mpqlab.quant.outlier import CompressedSavedActivations
from mpqlab.train import cosine_schedule, evaluate, repeat_epochs, seed_everything

RESULTS = repo_data_dir() / "results" / "outlier_backprop.json"


@dataclass
class Settings:
    model: str = "mobilenet_v1_small"  # architecture, trained from a seeded random initialisation
    bits: int = 3  # saved activations: b-bit codes ...
    ratio: float = 0.02  # ... plus this share of the non-zero values kept in float
    steps: int = 120  # SGD steps per run (one epoch is 859 steps of 64 images)
    batch_size: int = 64
    lr: float = 0.1  # SGD, Nesterov momentum 0.9, linear warm-up then cosine decay to 0
    warmup: int = 20
    weight_decay: float = 4e-5  # as for the shipped checkpoint
    eval_every: int = 20  # a point on the validation curve every eval_every steps (make steps a multiple)
    val_images: int = 1000  # first N validation images
    memory_images: int = 64  # batch of the step whose saved bytes are measured
    seed: int = 0


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


def train_run(settings: Settings, splits, compressed: bool, device: str = "cpu", steps: int | None = None) -> dict:
    """Train from the seeded initialisation for ``steps`` (default ``settings.steps``) steps of the schedule.

    Returns the loss of every step, the validation curve and the seconds taken.
    """
    steps = settings.steps if steps is None else steps
    seed_everything(settings.seed)
    model = build_model(settings.model).to(device)
    batches = repeat_epochs(make_loaders(splits, settings.batch_size, settings.seed)["train"])
    curve_loader = subset_loader(splits.val, settings.val_images)
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=0.9, nesterov=True,
                                weight_decay=settings.weight_decay)
    scheduler = cosine_schedule(optimizer, settings.steps, settings.warmup)
    criterion = nn.CrossEntropyLoss()
    losses, curve_steps, curve = [], [], []
    start = time.perf_counter()
    for step in tqdm(range(1, steps + 1), desc="compressed" if compressed else "float", leave=False):
        images, labels = next(batches)
        model.train()
        saving = CompressedSavedActivations(settings.bits, settings.ratio) if compressed else contextlib.nullcontext()
        with saving:  # only the forward pass saves tensors; backward reads them back through the same hooks
            loss = criterion(model(images.to(device)), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % settings.eval_every == 0:
            curve_steps.append(step)
            curve.append(evaluate(model, curve_loader, device))
    return {"compressed": compressed, "losses": losses, "curve_steps": curve_steps, "val_accuracy": curve,
            "seconds": time.perf_counter() - start}


def run(settings: Settings, splits=None, device: str = "cpu", out: Path | None = RESULTS) -> dict:
    """Both runs and the memory measurement; writes the JSON to ``out`` atomically (unless None)."""
    start = time.perf_counter()
    splits = splits or fashion_mnist_splits()
    images, labels = splits.train.tensors
    pretrained = load_pretrained(settings.model, device)
    memory = saved_bytes(pretrained, images[:settings.memory_images].to(device),
                         labels[:settings.memory_images].to(device), settings.bits, settings.ratio)
    result = {"script": "python -m mpqlab.experiments.outlier_backprop", "seed": settings.seed,
              "settings": asdict(settings), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "memory": memory, "runs": {}}
    for compressed in (False, True):
        row = train_run(settings, splits, compressed, device)
        result["runs"]["compressed" if compressed else "float"] = row
        print(f"{'compressed' if compressed else 'float':>10s}: val accuracy {row['val_accuracy'][-1]:.3f} "
              f"after {settings.steps} steps ({row['seconds']:.0f} s)", flush=True)
    return finish_result(result, start, out)


def main(argv=None) -> None:
    parser = experiment_parser(__doc__, RESULTS)
    parser.add_argument("--steps", type=int, default=Settings.steps, help="training steps per run")
    args = parse_experiment_args(parser, argv)
    result = run(Settings(steps=args.steps), out=args.out)
    report_written(args.out, result)


if __name__ == "__main__":
    main()
