"""Precompute notebook 10's comparison: accuracy vs BitOps of policies chosen by different criteria.

At each BitOps budget (that of uniform W{b}A{b} over the searchable layers, b in ``budgets_bits``)
five policies, each fine-tuned from the shipped float checkpoint the same way (LSQ, one epoch) and
scored on the full 10,000-image test set, once per seed:

- ``uniform``:    every searchable layer at W{b}A{b};
- ``limpq``:      LIMPQ's ILP over the learned indicators in ``data/results/limpq_<model>.json``;
- ``limpq_init``: the same ILP over the *untrained* indicators (LSQ's initial steps, the joint
                  training's starting point): the control LIMPQ must beat if learning matters;
- ``hessian``:    the same ILP over HAWQ-v2 Hessian-trace sensitivities (``mpqlab.limpq.hessian``),
                  traces estimated by Hutchinson until converged, with standard errors;
- ``random``:     random per-layer (b_w, b_a) with BitOps within 3% below the budget (drawn per seed).

plus ``float``: the float model fine-tuned with the same recipe (the reference "uniform loses N points
to float" is measured against). The seed sets the fine-tune's data order and the random policy; every
method uses the same seeds, so differences between methods are paired.

One rule sets alpha (the ILP minimises sum_l s_a + alpha * s_w) for every criterion: alpha balances the
two terms, alpha = mean(s_a) / mean(s_w) over all layers and bit-widths of that criterion's indicators
(``balanced_alpha``); LIMPQ's release uses alpha = 2 for its ImageNet indicators, whose s_w and s_a have
other magnitudes than ours. The first conv and the classifier stay at 8 bits everywhere. Run

    python -m mpqlab.experiments.limpq_pareto [--methods ...] [--seeds 0 1 2 3 4]

Each finished point is added to ``data/results/limpq_pareto.json`` as soon as it finishes (under a
file lock, so two processes with different ``--methods`` can share the file); run the same command
again after an interruption and the points already there are skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import random
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from mpqlab.checkpoint import atomic_write_json, load_pretrained
from mpqlab.data import calibration_batch, fashion_mnist_splits, make_loaders, repo_data_dir
from mpqlab.errors import DataFileError, InfeasibleBudgetError
from mpqlab.experiments.cli import experiment_parser, parse_experiment_args
from mpqlab.limpq.indicators import Indicators, indicators_from_dict, load_indicators
from mpqlab.limpq.joint import lsq_policy_model
from mpqlab.limpq.search import solve_policy, uniform_budget
from mpqlab.train import KeepStepsPositive, cosine_schedule, evaluate, repeat_epochs, seed_everything, train_epoch

RESULTS = repo_data_dir() / "results" / "limpq_pareto.json"
METHODS = ("float", "uniform", "limpq", "limpq_init", "hessian", "random")
SEARCHED = ("limpq", "limpq_init", "hessian")


@dataclass
class Settings:
    model: str = "mobilenet_v1_small"
    budgets_bits: tuple = (3, 4)  # BitOps budgets = uniform W{b}A{b} over the searchable layers
    bit_options: tuple = (2, 3, 4, 5, 6)
    seeds: tuple = (0, 1, 2, 3, 4)
    hessian_images: int = 1024
    hessian_min_probes: int = 20
    hessian_max_probes: int = 200
    hessian_target_rse: float = 0.05
    steps: int = 860  # fine-tune steps per policy: 860 * 64 = 55,040 images, one epoch
    lr: float = 1e-4  # Adam on weights ...
    step_lr: float = 1e-3  # ... and on LSQ step sizes; cosine decay to 0
    batch_size: int = 64
    eval_images: int = 10_000  # the full test set


def balanced_alpha(ind: Indicators) -> float:
    """alpha = mean(s_a) / mean(s_w) over every layer and bit-width: both terms of the ILP weigh alike.

    The same rule for every criterion, so none is tuned by hand. An all-zero s_w gives alpha = 1.
    """
    w = np.mean([v for row in ind.weight_indicators.values() for v in row.values()])
    a = np.mean([v for row in ind.act_indicators.values() for v in row.values()])
    return float(a / w) if w > 0 else 1.0


def random_policy(ind: Indicators, budget: float, bit_options, rng: random.Random, tolerance: float = 0.03,
                  tries: int = 100_000) -> dict[str, tuple[int, int]]:
    """Random (b_w, b_a) per searchable layer with (1 - tolerance) * budget <= BitOps <= budget."""
    names = ind.layer_names
    for _ in range(tries):
        pairs = {n: (rng.choice(bit_options), rng.choice(bit_options)) for n in names}
        ops = sum(ind.layer_macs[n] * w * a for n, (w, a) in pairs.items())
        if (1 - tolerance) * budget <= ops <= budget:
            return pairs
    raise InfeasibleBudgetError(f"no random policy within {tolerance:.0%} below the budget of {budget:.4g} BitOps "
                                f"in {tries} tries; raise the budget or the tolerance")


def finetune_policy(fp_model, policy: dict | None, splits, steps: int, lr: float = 1e-4, step_lr: float = 1e-3,
                    batch_size: int = 64, eval_images: int = 10_000, seed: int = 0, device: str = "cpu",
                    counts: dict | None = None) -> float:
    """LSQ at ``policy``'s bit-widths (None: the float model), ``steps`` Adam steps on seeded batches,
    then accuracy on the first ``eval_images`` test images.

    An Adam update that would take a step size to zero or below halves it instead (``KeepStepsPositive``);
    ``counts["step_halvings"]`` (if a dict is given) receives how often that happened."""
    seed_everything(seed)
    model = (lsq_policy_model(fp_model, policy) if policy is not None else _copy(fp_model)).to(device)
    steps_params = [p for n, p in model.named_parameters() if ".steps." in n or n.endswith(".step")]
    ids = {id(p) for p in steps_params}
    others = [p for p in model.parameters() if id(p) not in ids]
    optimizer = torch.optim.Adam([{"params": others, "lr": lr}, {"params": steps_params, "lr": step_lr}])
    guarded = KeepStepsPositive(optimizer, steps_params)
    loader = make_loaders(splits, batch_size, seed)["train"]
    train_epoch(model, repeat_epochs(loader), guarded, device, cosine_schedule(optimizer, steps), max_steps=steps,
                desc="fine-tune")
    if counts is not None:
        counts["step_halvings"] = guarded.halvings
    x, y = splits.test.tensors
    return evaluate(model, DataLoader(TensorDataset(x[:eval_images], y[:eval_images]), batch_size=500), device)


def _copy(model):
    import copy

    return copy.deepcopy(model)


def policy_for(method: str, budget_bits: int, seed: int, settings: Settings, criteria: dict) -> dict:
    """The policy of one point (before fine-tuning): pairs, BitOps, alpha; None pairs for ``float``."""
    ref = next(iter(criteria.values()))
    budget = uniform_budget(ref, budget_bits, budget_bits)
    fixed = {n: (f.w_bits, f.a_bits) for n, f in ref.fixed_layers.items()}
    alpha = None
    if method == "float":
        return {"budget": None, "bitops": None, "alpha": None, "policy": None}
    if method == "uniform":
        pairs = {n: (budget_bits, budget_bits) for n in ref.layer_names}
    elif method == "random":
        rng = random.Random(1000 * seed + budget_bits)  # a different draw per seed and budget
        pairs = random_policy(ref, budget, list(settings.bit_options), rng)
    else:
        ind = criteria[method]
        alpha = balanced_alpha(ind)
        pairs = solve_policy(ind, settings.bit_options, budget, alpha=alpha).policy
        pairs = {n: pairs[n] for n in ind.layer_names}
    ops = sum(ref.layer_macs[n] * w * a for n, (w, a) in pairs.items())
    return {"budget": budget, "bitops": ops, "alpha": alpha, "policy": {**pairs, **fixed}}


@contextlib.contextmanager
def locked(path: Path):
    """An exclusive lock on ``path``'s sibling ``.lock`` file while the block runs."""
    lock = path.with_name(f".{path.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_results(out: Path, settings: Settings) -> dict:
    """The result file if it was made with ``settings``, else a fresh skeleton (the old file is replaced)."""
    fresh = {"script": "python -m mpqlab.experiments.limpq_pareto", "settings": _plain(asdict(settings)),
             "torch": torch.__version__, "points": []}
    if out is None or not out.is_file():
        return fresh
    try:
        old = json.loads(out.read_text())
    except json.JSONDecodeError as err:
        raise DataFileError(f"{out} is not valid JSON ({err}); delete it or restore it from git") from None
    if not isinstance(old, dict) or old.get("settings") != fresh["settings"]:
        print(f"{out} was made with other settings: starting afresh", flush=True)
        return fresh
    return old


def _plain(obj):
    return json.loads(json.dumps(obj))  # tuples -> lists, as they come back from the file


def update_results(out: Path | None, settings: Settings, change, memory: dict | None = None) -> dict:
    """Read the file, apply ``change(result)`` and write it back atomically, all under the lock.

    Without a file (``out`` None) the change is applied to ``memory`` (a result dict kept by the caller).
    """
    if out is None:
        result = memory if memory is not None else read_results(None, settings)
        change(result)
        return result
    with locked(out):
        result = read_results(out, settings)
        change(result)
        result["timestamp"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        atomic_write_json(out, result)
    return result


def hessian_criterion(settings: Settings, splits, fp_model, out: Path | None, device: str = "cpu") -> Indicators:
    """HAWQ-v2 indicators, computed once and kept in the result file (with traces and standard errors)."""
    from mpqlab.limpq.hessian import hessian_indicators
    from mpqlab.limpq.indicators import indicators_to_dict

    stored = read_results(out, settings).get("hessian")
    if stored is not None:
        return indicators_from_dict(stored["indicators"], f"{out} 'hessian'")
    start = time.perf_counter()
    x, y = calibration_batch(splits, settings.hessian_images, seed=0)
    ind, traces = hessian_indicators(fp_model, x.to(device), y.to(device), settings.bit_options,
                                     min_probes=settings.hessian_min_probes, max_probes=settings.hessian_max_probes,
                                     target_rse=settings.hessian_target_rse, seed=0, device=device)
    entry = {"traces": traces, "indicators": indicators_to_dict(ind), "seconds": time.perf_counter() - start,
             "threads": torch.get_num_threads()}
    update_results(out, settings, lambda r: r.__setitem__("hessian", entry))
    return ind


def limpq_criterion(settings: Settings) -> Indicators:
    """The learned indicators shipped by ``mpqlab.experiments.limpq_indicators`` (its 3-epoch run)."""
    path = repo_data_dir() / "results" / f"limpq_{settings.model}.json"
    raw = json.loads(path.read_text())
    if "initial_weight_indicators" not in raw:
        raise DataFileError(f"{path} predates the 3-epoch joint training (no initial indicators); rerun "
                            f"python -m mpqlab.experiments.limpq_indicators --model {settings.model}")
    return load_indicators(path)


def criteria_for(methods, settings: Settings, splits, fp_model, out, device: str = "cpu") -> dict:
    """``{criterion name: Indicators}`` for the searched methods among ``methods``, plus a cost reference."""
    from mpqlab.experiments.limpq_indicators import initial_indicators, shipped_config

    criteria = {}
    if "limpq" in methods:
        criteria["limpq"] = limpq_criterion(settings)
    if "limpq_init" in methods or not criteria:
        criteria["limpq_init"] = initial_indicators(settings.model, shipped_config(), splits, device)
    if "hessian" in methods:
        criteria["hessian"] = hessian_criterion(settings, splits, fp_model, out, device)
    return criteria


def run(settings: Settings, methods=METHODS, out: Path | None = RESULTS, device: str = "cpu", seeds=None) -> dict:
    """Every missing (seed, budget, method) point, seed by seed (so a partial run covers every method).

    ``seeds``: a subset of ``settings.seeds`` to run now (default all); the file keeps ``settings``.
    """
    splits = fashion_mnist_splits()
    fp_model = load_pretrained(settings.model, device)
    criteria = criteria_for(methods, settings, splits, fp_model, out, device)
    result = read_results(out, settings)
    for seed in (settings.seeds if seeds is None else seeds):
        for budget_bits in settings.budgets_bits:
            for method in methods:
                b = 32 if method == "float" else budget_bits
                if method == "float" and budget_bits != settings.budgets_bits[0]:
                    continue  # one float point per seed
                current = result if out is None else read_results(out, settings)
                done = {(p["method"], p["budget_bits"], p["seed"]) for p in current["points"]}
                if (method, b, seed) in done:
                    continue
                row = {"method": method, "budget_bits": b, "seed": seed,
                       **policy_for(method, budget_bits, seed, settings, criteria)}
                t, counts = time.perf_counter(), {}
                row["accuracy"] = finetune_policy(fp_model, row["policy"], splits, settings.steps, settings.lr,
                                                  settings.step_lr, settings.batch_size, settings.eval_images,
                                                  seed, device, counts=counts)
                row["step_halvings"] = counts.get("step_halvings", 0)
                row["seconds"] = time.perf_counter() - t
                row["threads"] = torch.get_num_threads()
                if row["policy"] is not None:
                    row["policy"] = {n: list(p) for n, p in row["policy"].items()}
                result = update_results(out, settings, lambda r, row=row: r["points"].append(row), memory=result)
                ops = "" if row["bitops"] is None else f"{row['bitops'] / 1e6:.2f} M BitOps, "
                print(f"seed {seed} {method:>10s} @ W{b}A{b}: {ops}accuracy {row['accuracy']:.4f} "
                      f"({row['seconds']:.0f} s)", flush=True)
    return result


def main(argv=None) -> None:
    parser = experiment_parser(__doc__, RESULTS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(Settings.seeds),
                        help="run only these of the shipped seeds (e.g. to split the work between processes)")
    args = parse_experiment_args(parser, argv)
    settings = Settings()
    if not set(args.seeds) <= set(settings.seeds):
        parser.error(f"--seeds must be among the shipped seeds {list(settings.seeds)}, got {args.seeds}")
    run(settings, args.methods, args.out, seeds=args.seeds)
    print(f"updated {args.out}")


if __name__ == "__main__":
    main()
