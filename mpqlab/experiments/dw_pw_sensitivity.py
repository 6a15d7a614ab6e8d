"""Precompute notebook 09's depthwise / pointwise sensitivity runs (LIMPQ, Tang et al. ECCV 2022, Figure 2).

On the shipped MobileNetV1-small, for the depthwise and the pointwise conv of 5 pairs spread over
the depth, quantize that one conv (weights and input activations, LSQ) at 4 and at 2 bits, leave
everything else in full precision, fine-tune briefly, and record the learned step sizes and the
accuracy: 5 pairs x 2 convs x 2 bit-widths = 20 runs.

Fine-tune: SGD (momentum 0.9, cosine decay to 0) on all the network's weights plus the quantized
layer's two step sizes, ``steps`` batches of 128 (a tiny fraction of an epoch). A *control run*
fine-tunes the float model with the same recipe and the same batches; its accuracy is the
reference for every degradation, so the fine-tune itself is not counted as quantization damage.
Accuracy is measured on the first ``eval_images`` test images (a fixed subset, to save CPU).

    python -m mpqlab.experiments.dw_pw_sensitivity [--steps 40] [--eval-images 2000] [--out PATH]

rewrites ``data/results/dw_pw_sensitivity.json`` (one thread; the file records its ``seconds``).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from mpqlab.checkpoint import load_pretrained
from mpqlab.data import calibration_batch, fashion_mnist_splits, make_loaders, repo_data_dir
from mpqlab.experiments.cli import experiment_parser, finish_result, parse_experiment_args, report_written
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
    eval_images: int | None = 2000  # first N test images score every run; None = all 10,000
    seed: int = 0


def scoring_loader(splits, eval_images: int | None) -> DataLoader:
    """The fixed test subset every run is scored on."""
    x, y = splits.test.tensors
    n = len(x) if eval_images is None else eval_images
    return DataLoader(TensorDataset(x[:n], y[:n]), batch_size=1000)


def fine_tune(model, settings: Settings, splits, device: str = "cpu") -> float:
    """``settings.steps`` SGD steps on the seeded training batches; returns the mean training loss."""
    seed_everything(settings.seed)
    loader = make_loaders(splits, settings.batch_size, settings.seed)["train"]
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=0.9)
    return train_epoch(model, loader, optimizer, device, cosine_schedule(optimizer, settings.steps),
                       max_steps=settings.steps, desc="fine-tune")


def control_run(fp_model, settings: Settings, splits, device: str = "cpu") -> dict:
    """The float model fine-tuned with the same recipe: the reference accuracy of every run."""
    start = time.perf_counter()
    model = copy.deepcopy(fp_model)
    scorer = scoring_loader(splits, settings.eval_images)
    before = evaluate(model, scorer, device)
    loss = fine_tune(model, settings, splits, device)
    return {"accuracy_before": before, "accuracy": evaluate(model, scorer, device),
            "mean_train_loss": loss, "seconds": time.perf_counter() - start}


def single_layer_run(fp_model, layer: str, bits: int, settings: Settings, splits, device: str = "cpu") -> dict:
    """Quantize ``layer`` alone at ``bits``, fine-tune, and record steps and accuracy before and after."""
    start = time.perf_counter()
    model = quantize_single_layer(fp_model, layer, bits).to(device)
    images, _ = calibration_batch(splits, settings.calibration_images, settings.seed)
    initialize_steps(model, images.to(device))  # LSQ's initial steps from training images, not from the test set
    init = layer_steps(model, layer)
    scorer = scoring_loader(splits, settings.eval_images)
    ptq = evaluate(model, scorer, device)
    loss = fine_tune(model, settings, splits, device)
    learned = layer_steps(model, layer)
    kind = "depthwise" if layer.startswith("dw") else "pointwise"
    return {"layer": layer, "pair": int(layer.split(".")[0][2:]), "kind": kind, "bits": bits,
            "w_step": learned["w_step"], "a_step": learned["a_step"],
            "w_step_init": init["w_step"], "a_step_init": init["a_step"],
            "ptq_accuracy": ptq, "accuracy": evaluate(model, scorer, device),
            "mean_train_loss": loss, "seconds": time.perf_counter() - start}


def run(settings: Settings, splits=None, device: str = "cpu", out: Path | None = RESULTS) -> dict:
    """The control run and the 20 single-layer runs; writes the JSON to ``out`` (atomically) unless None."""
    start = time.perf_counter()
    splits = splits or fashion_mnist_splits()
    fp_model = load_pretrained(settings.model, device)
    result = {"script": "python -m mpqlab.experiments.dw_pw_sensitivity", "seed": settings.seed,
              "settings": asdict(settings), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "control": control_run(fp_model, settings, splits, device), "runs": []}
    print(f"control: {result['control']}", flush=True)
    for pair in settings.pairs:
        for layer in (f"dw{pair}.conv", f"pw{pair}.conv"):
            for bits in settings.bits:
                row = single_layer_run(fp_model, layer, bits, settings, splits, device)
                result["runs"].append(row)
                print(f"{layer:>10s} {bits} bits: acc {row['accuracy']:.4f} (PTQ {row['ptq_accuracy']:.4f}), "
                      f"s_w {row['w_step']:.4g}, s_a {row['a_step']:.4g}, {row['seconds']:.0f} s", flush=True)
    return finish_result(result, start, out)


def main(argv=None) -> None:
    parser = experiment_parser(__doc__, RESULTS)
    parser.add_argument("--steps", type=int, default=Settings.steps, help="fine-tune steps per run")
    parser.add_argument("--eval-images", type=int, default=Settings.eval_images,
                        help="score on the first N test images (0 = all 10,000)")
    args = parse_experiment_args(parser, argv)
    settings = Settings(steps=args.steps, eval_images=args.eval_images or None)
    result = run(settings, out=args.out)
    report_written(args.out, result)


if __name__ == "__main__":
    main()
