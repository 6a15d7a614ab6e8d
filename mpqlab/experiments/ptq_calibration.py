"""Precompute notebook 01's post-training quantization grid: calibration method x bit-width on the test set.

The shipped MobileNetV1-small is quantized at W{b}A{b} for b in 8, 6, 4 (first conv and last linear
layer held at 8 bits, as in most papers), with weights per output channel, symmetric, min-max, and
input activations per tensor, asymmetric, calibrated on ``calibration_images`` training images by each
method (min-max, percentile, MSE, KL). No retraining. Accuracy is on the full 10,000-image test set.
The grid is ``mpqlab.quant.ptq.ptq_table``. Extra rows repeat the methods of ``input_minmax`` with
the network's input (the image, first conv) calibrated by min-max instead: notebook 01 shows why KL
calibration fails on that tensor.

    python -m mpqlab.experiments.ptq_calibration [--eval-images 10000] [--out PATH]

rewrites ``data/results/ptq_calibration.json`` (one thread; the file records its ``seconds``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from mpqlab.checkpoint import atomic_write_json, load_pretrained
from mpqlab.data import Splits, calibration_batch, fashion_mnist_splits, make_loaders, repo_data_dir
from mpqlab.experiments.cli import experiment_parser, parse_experiment_args
from mpqlab.quant.policy import quantizable_layers, quantize_model, uniform_policy
from mpqlab.quant.ptq import act_quantizer_factory, calibrate, ptq_table
from mpqlab.quant.uniform import default_weight_quantizer
from mpqlab.train import evaluate

RESULTS = repo_data_dir() / "results" / "ptq_calibration.json"


@dataclass
class Settings:
    model: str = "mobilenet_v1_small"  # shipped checkpoint
    bits: tuple = (8, 6, 4)  # W{b}A{b} for every layer except the first and last
    methods: tuple = ("minmax", "percentile", "mse", "kl")  # activation calibration (mpqlab.quant.ptq)
    first_last_bits: int | None = 8  # first conv and last linear layer; None = like the rest
    input_minmax: tuple = ("kl",)  # also run these methods with min-max on the network input only
    calibration_images: int = 512  # training images seen by the observers
    eval_images: int | None = None  # first N test images; None = all 10,000
    seed: int = 0  # picks the calibration images


def cut_test_set(splits: Splits, eval_images: int | None) -> Splits:
    """The same splits with the test set cut to its first ``eval_images`` images (None: unchanged)."""
    if eval_images is None:
        return splits
    x, y = splits.test.tensors
    return Splits(splits.train, splits.val, TensorDataset(x[:eval_images], y[:eval_images]))


def input_minmax_factory(method: str, input_layer: str):
    """Activation factory: ``method`` for every layer except ``input_layer``, whose input gets min-max."""
    chosen, minmax = act_quantizer_factory(method), act_quantizer_factory("minmax")

    def factory(bits, name, layer):
        return (minmax if name == input_layer else chosen)(bits, name, layer)

    return factory


def input_minmax_rows(model, splits: Splits, settings: Settings, device: str = "cpu") -> list[dict]:
    """Accuracy of each ``settings.input_minmax`` method with a min-max quantizer on the network input."""
    images, _ = calibration_batch(splits, n=settings.calibration_images, seed=settings.seed)
    test_loader = make_loaders(splits, seed=settings.seed)["test"]
    input_layer = quantizable_layers(model)[0]
    rows = []
    for method in settings.input_minmax:
        for bits in settings.bits:
            policy = uniform_policy(model, bits, bits, first_last_bits=settings.first_last_bits)
            qmodel = quantize_model(model, policy, weight_quantizer=default_weight_quantizer,
                                    act_quantizer=input_minmax_factory(method, input_layer))
            calibrate(qmodel, images, device=device)
            rows.append({"method": f"{method} (input: minmax)", "w_bits": bits, "a_bits": bits,
                         "accuracy": evaluate(qmodel, test_loader, device)})
    return rows


def run(settings: Settings, splits=None, device: str = "cpu", out: Path | None = RESULTS) -> dict:
    """The float row and every (method, bits) row; writes the JSON to ``out`` (atomically) unless None."""
    start = time.perf_counter()
    splits = cut_test_set(splits or fashion_mnist_splits(), settings.eval_images)
    model = load_pretrained(settings.model, device)
    table = ptq_table(model, splits, bits_list=settings.bits, methods=settings.methods,
                      calib_size=settings.calibration_images, first_last_bits=settings.first_last_bits,
                      seed=settings.seed, device=device)
    result = {"script": "python -m mpqlab.experiments.ptq_calibration", "seed": settings.seed,
              "settings": asdict(settings), "test_images": len(splits.test), "torch": torch.__version__,
              "threads": torch.get_num_threads(),
              "rows": table.to_dict(orient="records") + input_minmax_rows(model, splits, settings, device),
              "seconds": time.perf_counter() - start,
              "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if out is not None:
        atomic_write_json(out, result)
    return result


def main(argv=None) -> None:
    parser = experiment_parser(__doc__, RESULTS)
    parser.add_argument("--eval-images", type=int, default=None, help="first N test images (default: all)")
    parser.add_argument("--calibration-images", type=int, default=Settings.calibration_images)
    args = parse_experiment_args(parser, argv)
    settings = Settings(eval_images=args.eval_images, calibration_images=args.calibration_images)
    result = run(settings, out=args.out)
    for row in result["rows"]:
        print(f"{row['method']:>10s} W{row['w_bits']}A{row['a_bits']}: {row['accuracy']:.4f}")
    print(f"{result['seconds']:.0f} s, written to {args.out}")


if __name__ == "__main__":
    main()
