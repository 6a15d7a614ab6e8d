"""Precompute LIMPQ's importance indicators for the shipped networks (notebook 10) by joint training.

Starts from a shipped float checkpoint, runs ``mpqlab.limpq.joint.train_joint`` (every candidate
bit-width plus one random pass per step) and writes the learned step sizes in the indicator format of
``mpqlab.limpq.indicators`` to ``data/results/limpq_<model>.json``, with the settings, the seed,
the seconds it took, the per-step losses and the accuracy of the jointly trained network at each
uniform bit-width. Run

    python -m mpqlab.experiments.limpq_indicators [--model mobilenet_v1_small] [--steps 150]

(one thread by default: the machine is shared).
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
from mpqlab.limpq.joint import JointConfig, indicators_from_model, searchable_layers, set_bits, train_joint
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


def run(model_name: str, config: JointConfig, eval_images: int = 2000, device: str = "cpu",
        out: Path | None = None) -> dict:
    """Train, evaluate, and save the indicator file (unless ``out`` is None); returns the extra keys written."""
    start = time.perf_counter()
    seed_everything(config.seed)
    splits = fashion_mnist_splits()
    fp_model = load_pretrained(model_name, device)
    loader = make_loaders(splits, config.batch_size, config.seed)["train"]
    model, history = train_joint(fp_model, loader, config, device)
    train_seconds = time.perf_counter() - start
    x, y = splits.test.tensors
    test = DataLoader(TensorDataset(x[:eval_images], y[:eval_images]), batch_size=500)
    extra = {
        "source": f"python -m mpqlab.experiments.limpq_indicators --model {model_name} --steps {config.steps}",
        "model": model_name, "seed": config.seed, "settings": asdict(config),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "train_seconds": train_seconds,
        "seconds_per_step": train_seconds / config.steps,
        "losses": {col: [round(v, 4) for v in history[col]] for col in history.columns if col.startswith("loss")},
        "eval_images": eval_images,
        "uniform_accuracy": uniform_accuracies(model, config.bit_options, test,
                                               calibration_batch(splits, 1000, config.seed)[0], device),
        "float_accuracy": evaluate(fp_model, test, device),
    }
    extra["seconds"] = time.perf_counter() - start
    extra["timestamp"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if out is not None:
        save_indicators(out, indicators_from_model(model, fp_model), extra)
    return extra


def main(argv=None) -> None:
    parser = experiment_parser(__doc__, None)
    parser.add_argument("--model", default="mobilenet_v1_small", choices=["mobilenet_v1_small", "resnet20"])
    parser.add_argument("--steps", type=int, default=150, help="joint steps (each n + 1 passes)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--bn-per-bits", action="store_true", help="one BatchNorm per bit-width")
    parser.add_argument("--eval-images", type=int, default=2000)
    args = parse_experiment_args(parser, argv)
    config = JointConfig(steps=args.steps, batch_size=args.batch_size, bn_per_bits=args.bn_per_bits)
    out = args.out or results_path(args.model)
    extra = run(args.model, config, args.eval_images, out=out)
    print(f"uniform accuracy after joint training: {extra['uniform_accuracy']} (float {extra['float_accuracy']})")
    print(f"wrote {out} in {extra['seconds']:.0f} s ({extra['seconds_per_step']:.2f} s per joint step, "
          f"{extra['threads']} thread(s), finished {extra['timestamp']})")


if __name__ == "__main__":
    main()
