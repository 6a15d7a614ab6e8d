"""Precompute LIMPQ's importance indicators for the shipped networks (notebook 10) by joint training.

Starts from a shipped float checkpoint, runs ``mpqlab.limpq.joint.train_joint`` (every candidate
bit-width plus one random pass per step) and writes the learned step sizes in the indicator format of
``mpqlab.limpq.indicators`` to ``data/results/limpq_<model>.json``, with the settings, the seed,
the seconds it took, the per-step losses, the accuracy of the jointly trained network at each
uniform bit-width, and the *initial* step sizes (``initial_weight_indicators``, ``initial_act_indicators``:
LSQ's start, the indicators of the untrained joint model) so that one can see how far training moved them.

The shipped run (the defaults) follows LIMPQ's released recipe as far as the laptop allows: SGD with
momentum 0.9 at lr 0.01 with cosine decay for weights and step sizes alike, one BatchNorm per
bit-width, each pass's gradient clipped to norm 1 (the 2-bit pass would otherwise wreck the shared
weights: see ``joint_step``), step sizes kept above 1% of their start, batch 64, 2,580 joint steps (165,120 images: 3 epochs of the 55,000 training images). Run

    python -m mpqlab.experiments.limpq_indicators [--model mobilenet_v1_small] [--steps 2580]

(one thread by default: the machine is shared). It saves its state every 200 steps next to the result
(``<out>.state.pt``); run the same command again after an interruption and it continues.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from mpqlab.checkpoint import load_pretrained
from mpqlab.data import calibration_batch, fashion_mnist_splits, make_loaders, repo_data_dir
from mpqlab.experiments.cli import experiment_parser, parse_experiment_args
from mpqlab.limpq.indicators import save_indicators
from mpqlab.limpq.joint import (
    JointConfig, indicators_from_model, initial_model, searchable_layers, set_bits, train_joint,
)
from mpqlab.train import evaluate, seed_everything


def results_path(model: str) -> Path:
    return repo_data_dir() / "results" / f"limpq_{model}.json"


def recalibrate_bn(model, images: torch.Tensor, batch_size: int = 250) -> None:
    """Re-estimate every BatchNorm's running statistics at the current bit-widths (no gradients).

    During joint training all n + 1 passes update the same running statistics, so after it they
    describe no single bit-width; slimmable networks fix this the same way before evaluating.
    """
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the calibration batches
    model.train()
    with torch.no_grad():
        for chunk in images.split(batch_size):
            model(chunk)
    model.eval()


def uniform_accuracies(model, bit_options, loader, calibration: torch.Tensor, device: str = "cpu") -> dict:
    """Test accuracy of the jointly trained network with every searchable layer at b bits, per b."""
    layers, _ = searchable_layers(model)
    out = {}
    for b in sorted(bit_options):
        set_bits(model, {n: b for n in layers}, {n: b for n in layers})
        recalibrate_bn(model, calibration.to(device))
        out[str(b)] = evaluate(model, loader, device)
    return out


def shipped_config(steps: int = 2580, batch_size: int = 64, random_pass: bool = True) -> JointConfig:
    """The shipped run's settings (see the module docstring); ``random_pass=False`` is the paper's ablation."""
    return JointConfig(steps=steps, batch_size=batch_size, lr=0.01, step_lr=0.01, optimizer="sgd",
                       momentum=0.9, bn_per_bits=True, max_grad_norm=1.0, random_pass=random_pass)


def initial_indicators(model_name: str, config: JointConfig, splits=None, device: str = "cpu"):
    """The indicators of the untrained joint model, from the same first batch ``train_joint`` starts with."""
    splits = splits or fashion_mnist_splits()
    fp_model = load_pretrained(model_name, device)
    first = next(iter(make_loaders(splits, config.batch_size, config.seed)["train"]))[0]
    return indicators_from_model(initial_model(fp_model, config, first, device), fp_model)


def run(model_name: str, config: JointConfig, eval_images: int = 10_000, device: str = "cpu",
        out: Path | None = None, min_step_fraction: float = 0.01) -> dict:
    """Train, evaluate, and save the indicator file (unless ``out`` is None); returns the extra keys written."""
    start = time.perf_counter()
    seed_everything(config.seed)
    splits = fashion_mnist_splits()
    fp_model = load_pretrained(model_name, device)
    loader = make_loaders(splits, config.batch_size, config.seed)["train"]
    state = None if out is None else Path(out).with_suffix(".state.pt")
    model, history = train_joint(fp_model, loader, config, device, resume_from=state,
                                 min_step_fraction=min_step_fraction)
    train_seconds = float(history["seconds"].iloc[-1])
    initial = initial_indicators(model_name, config, splits, device)
    x, y = splits.test.tensors
    test = DataLoader(TensorDataset(x[:eval_images], y[:eval_images]), batch_size=500)
    extra = {
        "source": f"python -m mpqlab.experiments.limpq_indicators --model {model_name} --steps {config.steps}",
        "model": model_name, "seed": config.seed, "settings": asdict(config),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "train_seconds": train_seconds,
        "seconds_per_step": train_seconds / config.steps,
        "images_seen": config.steps * config.batch_size,
        "min_step_fraction": min_step_fraction,
        "initial_weight_indicators": {n: {str(b): v for b, v in row.items()}
                                      for n, row in initial.weight_indicators.items()},
        "initial_act_indicators": {n: {str(b): v for b, v in row.items()}
                                   for n, row in initial.act_indicators.items()},
        "losses": {col: [round(v, 4) for v in history[col]] for col in history.columns if col.startswith("loss")},
        "eval_images": eval_images,
        "uniform_accuracy": uniform_accuracies(model, config.bit_options, test,
                                               calibration_batch(splits, 1000, config.seed)[0], device),
        "float_accuracy": evaluate(fp_model, test, device),
    }
    final = indicators_from_model(model, fp_model)
    extra["steps_on_floor"] = sum(
        final.weight_indicators[n][b] <= min_step_fraction * initial.weight_indicators[n][b] * (1 + 1e-6)
        for n in final.layer_names for b in config.bit_options) + sum(
        final.act_indicators[n][b] <= min_step_fraction * initial.act_indicators[n][b] * (1 + 1e-6)
        for n in final.layer_names for b in config.bit_options)
    extra["seconds"] = time.perf_counter() - start  # this invocation; train_seconds counts resumed runs too
    extra["timestamp"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if out is not None:
        save_indicators(out, final, extra)
        if state is not None:
            state.unlink(missing_ok=True)
    return extra


def main(argv=None) -> None:
    parser = experiment_parser(__doc__, None)
    parser.add_argument("--model", default="mobilenet_v1_small", choices=["mobilenet_v1_small", "resnet20"])
    parser.add_argument("--steps", type=int, default=2580, help="joint steps (each n + 1 passes)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-images", type=int, default=10_000)
    parser.add_argument("--no-random-pass", action="store_true",
                        help="the paper's ablation: train without the random pass (n passes per step, not n + 1); "
                             "give --out, or it replaces the shipped indicators")
    args = parse_experiment_args(parser, argv)
    config = shipped_config(args.steps, args.batch_size, random_pass=not args.no_random_pass)
    out = args.out or results_path(args.model)
    extra = run(args.model, config, args.eval_images, out=out)
    print(f"uniform accuracy after joint training: {extra['uniform_accuracy']} (float {extra['float_accuracy']})")
    print(f"wrote {out} in {extra['seconds']:.0f} s ({extra['seconds_per_step']:.2f} s per joint step, "
          f"{extra['threads']} thread(s), finished {extra['timestamp']})")


if __name__ == "__main__":
    main()
