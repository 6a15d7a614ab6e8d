"""Fine-tune the LSQ models notebook 11 packs into bytes: MobileNetV1-small at W8A8, W4A4 and a LIMPQ policy.

Each model starts from the shipped float checkpoint, gets plain LSQ quantizers at its policy
(``mpqlab.limpq.joint.lsq_policy_model``; first conv and classifier at 8 bits, the first layer's input
signed) and is fine-tuned for ``steps`` seeded SGD steps with ``mpqlab.qat.fine_tune``. The LIMPQ policy is
notebook 10's at the W4A4 BitOps budget (``data/results/limpq_pareto.json``): weights at 2-6 bits, so the
packed file holds 2-, 3-, 4-, 5-, 6- and 8-bit codes. Each model is saved as
``data/checkpoints/deploy_<policy>.pt`` with its metadata (policy, accuracy, seconds, SHA-256) beside it.

Then every model is packed (``mpqlab.deploy``) and its integer-only path is compared with its fake-quant
model on all 10,000 test images, and the W8A8 and W4A4 models' ONNX QDQ graphs run in onnxruntime are
compared with the integer path; sizes and agreement numbers go to ``data/results/deploy_models.json``.

    python -m mpqlab.experiments.deploy_models [--steps 400] [--threads 1]

Resumable: a model whose checkpoint exists with the same settings is not trained again.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mpqlab.checkpoint import checkpoint_dir, load_checkpoint, load_pretrained, read_meta, save_checkpoint
from mpqlab.data import fashion_mnist_splits, repo_data_dir
from mpqlab.experiments.cli import experiment_parser, finish_result, parse_experiment_args, report_written
from mpqlab.limpq.joint import lsq_policy_model
from mpqlab.qat import fine_tune
from mpqlab.quant.policy import uniform_policy

RESULTS = repo_data_dir() / "results" / "deploy_models.json"
POLICY_NAMES = ("w8a8", "w4a4", "limpq")


@dataclass
class Settings:
    model: str = "mobilenet_v1_small"  # shipped float checkpoint every model starts from
    steps: int = 400  # SGD steps of batch_size images (an epoch is 430 steps)
    lr: float = 0.01  # network weights: SGD, momentum 0.9, cosine decay to 0
    quant_lr: float = 0.001  # LSQ step sizes
    batch_size: int = 128
    limpq_budget_bits: int = 4  # notebook 10's LIMPQ policy at the BitOps budget of uniform W4A4
    seed: int = 0


def limpq_policy(budget_bits: int = 4, path: Path | None = None) -> dict[str, tuple[int, int]]:
    """Notebook 10's LIMPQ policy at the BitOps budget of uniform W{budget_bits}A{budget_bits}."""
    path = path or repo_data_dir() / "results" / "limpq_pareto.json"
    points = json.loads(Path(path).read_text())["points"]
    for p in points:
        if p["method"] == "limpq" and p["budget_bits"] == budget_bits:
            return {name: (int(w), int(a)) for name, (w, a) in p["policy"].items()}
    raise KeyError(f"{path} holds no LIMPQ point at budget W{budget_bits}A{budget_bits}")


def policies(fp_model, settings: Settings) -> dict[str, dict]:
    """The three policies by name: uniform W8A8, uniform W4A4 (first/last at 8 bits) and LIMPQ's."""
    return {"w8a8": uniform_policy(fp_model, 8, 8, first_last_bits=8),
            "w4a4": uniform_policy(fp_model, 4, 4, first_last_bits=8),
            "limpq": limpq_policy(settings.limpq_budget_bits)}


def checkpoint_path(name: str) -> Path:
    return checkpoint_dir() / f"deploy_{name}.pt"


def load_deploy_model(name: str, model: str = "mobilenet_v1_small", device: str = "cpu") -> torch.nn.Module:
    """A shipped fine-tuned LSQ model ('w8a8', 'w4a4' or 'limpq'), in eval mode (checksum verified)."""
    from mpqlab.deploy.fold import lsq_model_from_state

    path = checkpoint_path(name)
    return lsq_model_from_state(model, load_checkpoint(path), source=str(path)).to(device).eval()


def train_one(name: str, policy: dict, settings: Settings, splits, device: str = "cpu") -> dict:
    """Fine-tune one policy (or reuse its checkpoint if the settings match); returns its metadata."""
    path = checkpoint_path(name)
    wanted = {"policy_name": name, "settings": asdict(settings),
              "policy": {n: list(p) for n, p in policy.items()}}
    if path.is_file() and path.with_suffix(".json").is_file():
        meta = read_meta(path)
        if all(meta.get(k) == v for k, v in wanted.items()):
            print(f"{name}: reusing {path.name} (accuracy {meta['accuracy']:.4f})", flush=True)
            return meta
    fp_model = load_pretrained(settings.model, device)
    qmodel = lsq_policy_model(fp_model, policy).to(device)
    result = fine_tune(qmodel, splits, steps=settings.steps, lr=settings.lr, quant_lr=settings.quant_lr,
                       chunk=settings.steps, eval_images=len(splits.test), curve_images=500,
                       batch_size=settings.batch_size, seed=settings.seed, device=device)
    meta = {**wanted, "accuracy": result.accuracy, "start_accuracy": result.start_accuracy,
            "seconds": result.seconds, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "command": "python -m mpqlab.experiments.deploy_models"}
    save_checkpoint(path, qmodel.state_dict(), meta)
    print(f"{name}: fine-tuned in {result.seconds:.0f} s, test accuracy {result.accuracy:.4f}", flush=True)
    return read_meta(path)


def measure(name: str, settings: Settings, splits, device: str = "cpu") -> dict:
    """Pack one shipped model, read the file back and compare its integer path with fake quant on the test set."""
    from mpqlab.deploy import compare_integer, export_model, load_packed, packed_size_report

    qmodel = load_deploy_model(name, settings.model, device)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / f"{name}.safetensors"
        export_model(qmodel, out)
        packed = load_packed(out)
        size = packed_size_report(qmodel, out)
    t = time.perf_counter()
    agreement = compare_integer(qmodel, packed, splits.test, device=device)
    return {**size, **agreement, "agreement_seconds": time.perf_counter() - t}


def run(settings: Settings, out: Path | None = RESULTS, device: str = "cpu") -> dict:
    start = time.perf_counter()
    splits = fashion_mnist_splits()
    fp_model = load_pretrained(settings.model, device)
    result = {"script": "python -m mpqlab.experiments.deploy_models", "settings": asdict(settings),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "models": {}}
    for name, policy in policies(fp_model, settings).items():
        meta = train_one(name, policy, settings, splits, device)
        row = {"accuracy": meta["accuracy"], "train_seconds": meta["seconds"], "policy": meta["policy"]}
        row |= measure(name, settings, splits, device)
        print(f"{name}: file {row['file_bytes']} B, cost model {row['cost_model_bytes']} B, "
              f"identical predictions {row['same_prediction']:.4%}, "
              f"largest logit difference {row['max_logit_diff']:.4f} (largest |logit| {row['max_abs_logit']:.1f}), "
              f"largest code difference {max(row['max_code_diff'].values())} steps", flush=True)
        result["models"][name] = row
    result["onnx"] = {name: onnx_agreement(name, settings, splits) for name in ("w8a8", "w4a4")}
    return finish_result(result, start, out)


def onnx_agreement(name: str, settings: Settings, splits) -> dict:
    """onnxruntime (QDQ graph) vs the integer path on the whole test set: identical predictions, logit gap."""
    from mpqlab.deploy import IntegerModel, export_model, load_packed
    from mpqlab.deploy.onnx_qdq import onnx_logits, qdq_model

    with tempfile.TemporaryDirectory() as folder:
        packed = load_packed(export_model(load_deploy_model(name, settings.model), Path(folder) / f"{name}.safetensors"))
    images = splits.test.tensors[0]
    t = time.perf_counter()
    graph = qdq_model(packed)
    ort = onnx_logits(graph, images)
    ort_seconds = time.perf_counter() - t
    integer = IntegerModel(packed)
    ours = torch.cat([integer(images[i:i + 500]) for i in range(0, len(images), 500)])
    row = {"opset": graph.opset_import[0].version, "images": len(images), "onnxruntime_seconds": ort_seconds,
           "same_prediction": float((ort.argmax(1) == ours.argmax(1)).double().mean()),
           "max_logit_diff": float((ort.double() - ours).abs().max())}
    print(f"onnx {name}: identical predictions with the integer path {row['same_prediction']:.4%}", flush=True)
    return row


def main(argv=None) -> None:
    parser = experiment_parser(__doc__, RESULTS)
    parser.add_argument("--steps", type=int, default=Settings.steps, help="fine-tune steps per policy")
    args = parse_experiment_args(parser, argv)
    result = run(Settings(steps=args.steps), args.out)
    report_written(args.out, result)


if __name__ == "__main__":
    main()
