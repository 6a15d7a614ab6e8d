"""Precompute notebook 10's Pareto points: accuracy vs BitOps of policies chosen by different criteria.

At each BitOps budget (that of uniform W{b}A{b} over the searchable layers, b in ``budgets_bits``)
four policies, each fine-tuned briefly from the shipped float checkpoint with LSQ and scored:

- ``uniform``: every searchable layer at W{b}A{b};
- ``limpq``:   LIMPQ's ILP over the learned indicators in ``data/results/limpq_<model>.json``;
- ``hessian``: the same ILP over HAWQ-v2 Hessian-trace sensitivities (``mpqlab.limpq.hessian``);
- ``random``:  random per-layer (b_w, b_a) with BitOps within 3% below the budget (seeded).

The first conv and the classifier stay at 8 bits everywhere. Run

    python -m mpqlab.experiments.limpq_pareto [--steps 40] [--methods uniform limpq hessian random]

which writes ``data/results/limpq_pareto.json``; points of methods not rerun are kept from the file.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from mpqlab.checkpoint import atomic_write_json, load_pretrained
from mpqlab.data import calibration_batch, fashion_mnist_splits, make_loaders, repo_data_dir
from mpqlab.experiments.cli import experiment_parser, parse_experiment_args, report_written
from mpqlab.limpq.hessian import hessian_indicators
from mpqlab.limpq.indicators import Indicators, load_indicators
from mpqlab.limpq.joint import lsq_policy_model
from mpqlab.limpq.search import solve_policy, uniform_budget
from mpqlab.train import cosine_schedule, evaluate, seed_everything, train_epoch

RESULTS = repo_data_dir() / "results" / "limpq_pareto.json"
METHODS = ("uniform", "limpq", "hessian", "random")


@dataclass
class Settings:
    model: str = "mobilenet_v1_small"
    budgets_bits: tuple = (3, 4)  # BitOps budgets = uniform W{b}A{b} over the searchable layers
    bit_options: tuple = (2, 3, 4, 5, 6)
    alpha_limpq: float = 2.0  # LIMPQ's released setting
    alpha_hessian: float = 1.0  # both Omega's estimate a loss increase: same units
    hessian_images: int = 128
    hessian_probes: int = 32
    steps: int = 40  # fine-tune steps per policy (batch 64: about 4% of an epoch)
    lr: float = 1e-4  # Adam on weights ...
    step_lr: float = 1e-3  # ... and on LSQ step sizes
    batch_size: int = 64
    eval_images: int = 2000  # first N test images
    seed: int = 0


def random_policy(ind: Indicators, budget: float, bit_options, rng: random.Random, tolerance: float = 0.03,
                  tries: int = 100_000) -> dict[str, tuple[int, int]]:
    """Random (b_w, b_a) per searchable layer with (1 - tolerance) * budget <= BitOps <= budget."""
    names = ind.layer_names
    for _ in range(tries):
        pairs = {n: (rng.choice(bit_options), rng.choice(bit_options)) for n in names}
        ops = sum(ind.layer_macs[n] * w * a for n, (w, a) in pairs.items())
        if (1 - tolerance) * budget <= ops <= budget:
            return pairs
    raise RuntimeError(f"no random policy within {tolerance:.0%} of {budget} BitOps in {tries} tries")


def finetune_policy(fp_model, policy: dict, splits, steps: int, lr: float = 1e-4, step_lr: float = 1e-3,
                    batch_size: int = 64, eval_images: int = 2000, seed: int = 0, device: str = "cpu") -> float:
    """LSQ at ``policy``'s bit-widths, ``steps`` Adam steps on seeded batches, then test accuracy."""
    seed_everything(seed)
    model = lsq_policy_model(fp_model, policy).to(device)
    steps_params = [p for n, p in model.named_parameters() if ".steps." in n]
    others = [p for n, p in model.named_parameters() if ".steps." not in n]
    optimizer = torch.optim.Adam([{"params": others, "lr": lr}, {"params": steps_params, "lr": step_lr}])
    loader = make_loaders(splits, batch_size, seed)["train"]
    train_epoch(model, loader, optimizer, device, cosine_schedule(optimizer, steps), max_steps=steps,
                desc="fine-tune")
    x, y = splits.test.tensors
    return evaluate(model, DataLoader(TensorDataset(x[:eval_images], y[:eval_images]), batch_size=500), device)


def policies_for(settings: Settings, methods, limpq: Indicators | None, hessian: Indicators | None) -> list[dict]:
    """One dict per (method, budget): the policy and its BitOps, before fine-tuning."""
    rng = random.Random(settings.seed)
    ref = limpq or hessian
    out = []
    for b in settings.budgets_bits:
        budget = uniform_budget(ref, b, b)
        fixed = {n: (f.w_bits, f.a_bits) for n, f in ref.fixed_layers.items()}
        for method in methods:
            if method == "uniform":
                pairs = {n: (b, b) for n in ref.layer_names}
            elif method == "random":
                pairs = random_policy(ref, budget, list(settings.bit_options), rng)
            else:
                ind, alpha = (limpq, settings.alpha_limpq) if method == "limpq" else (hessian, settings.alpha_hessian)
                pairs = solve_policy(ind, settings.bit_options, budget, alpha=alpha).policy
                pairs = {n: pairs[n] for n in ind.layer_names}
            ops = sum(ref.layer_macs[n] * w * a for n, (w, a) in pairs.items())
            out.append({"method": method, "budget_bits": b, "budget": budget, "bitops": ops,
                        "policy": {**pairs, **fixed}})
    return out


def run(settings: Settings, methods=METHODS, out: Path | None = RESULTS, device: str = "cpu") -> dict:
    start = time.perf_counter()
    splits = fashion_mnist_splits()
    fp_model = load_pretrained(settings.model, device)
    limpq = None
    if "limpq" in methods:
        limpq = load_indicators(repo_data_dir() / "results" / f"limpq_{settings.model}.json")
    old = json.loads(out.read_text()) if out is not None and out.is_file() else {"points": []}
    hessian = None
    if "hessian" in methods or "hessian_traces" not in old:
        x, y = calibration_batch(splits, settings.hessian_images, settings.seed)
        hessian, traces = hessian_indicators(fp_model, x.to(device), y.to(device), settings.bit_options,
                                             settings.hessian_probes, settings.seed)
        old["hessian_seconds"] = time.perf_counter() - start
        old["hessian_traces"] = traces
        old["hessian_indicators"] = {n: {"w": hessian.weight_indicators[n], "a": hessian.act_indicators[n]}
                                     for n in hessian.layer_names}
    points = [p for p in old["points"] if p["method"] not in methods]
    for row in policies_for(settings, methods, limpq, hessian):
        t = time.perf_counter()
        row["accuracy"] = finetune_policy(fp_model, row["policy"], splits, settings.steps, settings.lr,
                                          settings.step_lr, settings.batch_size, settings.eval_images,
                                          settings.seed, device)
        row["seconds"] = time.perf_counter() - t
        row["policy"] = {n: list(p) for n, p in row["policy"].items()}
        points.append(row)
        print(f"{row['method']:>8s} @ W{row['budget_bits']}A{row['budget_bits']} budget: "
              f"{row['bitops'] / 1e6:.2f} M BitOps, accuracy {row['accuracy']:.4f} ({row['seconds']:.0f} s)", flush=True)
    # seconds: this run only; methods kept from an earlier run keep their own per-point seconds
    result = {"script": "python -m mpqlab.experiments.limpq_pareto", "seed": settings.seed,
              "settings": asdict(settings), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "hessian_seconds": old["hessian_seconds"], "hessian_traces": old["hessian_traces"],
              "hessian_indicators": old["hessian_indicators"],
              "points": points, "seconds": time.perf_counter() - start,
              "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if out is not None:
        atomic_write_json(out, result)
    return result


def main(argv=None) -> None:
    parser = experiment_parser(__doc__, RESULTS)
    parser.add_argument("--steps", type=int, default=Settings.steps, help="fine-tune steps per policy")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--eval-images", type=int, default=Settings.eval_images)
    args = parse_experiment_args(parser, argv)
    result = run(Settings(steps=args.steps, eval_images=args.eval_images), args.methods, args.out)
    report_written(args.out, result)


if __name__ == "__main__":
    main()
