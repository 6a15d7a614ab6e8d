"""Notebook 10's precompute (mpqlab.experiments.limpq_pareto): alpha, policies per method, the result file, resuming.

No training here: ``finetune_policy`` and the data/criteria loaders are replaced by fast stand-ins.
"""

import fcntl
import json
import random

import pytest

from mpqlab.errors import DataFileError, InfeasibleBudgetError
from mpqlab.experiments import limpq_pareto
from mpqlab.experiments.limpq_pareto import (
    Settings, balanced_alpha, policy_for, random_policy, read_results, run, update_results,
)
from mpqlab.limpq.indicators import FixedLayer, Indicators
from mpqlab.limpq.search import uniform_budget

OPTIONS = (2, 3, 4, 5, 6)
NAMES = [f"l{i}" for i in range(8)]
MACS = {n: m for n, m in zip(NAMES, [1000, 2000, 1500, 3000, 800, 2500, 1200, 1800])}


def toy_indicators(seed: int, act_scale: float = 1.0) -> Indicators:
    """Eight searchable layers whose steps shrink with the bit-width, plus two fixed 8-bit layers."""
    rng = random.Random(seed)

    def table(scale):
        return {n: {b: scale * rng.uniform(0.5, 2.0) / 2 ** b for b in OPTIONS} for n in NAMES}

    return Indicators(NAMES, table(1.0), table(act_scale), dict(MACS), {n: MACS[n] // 10 for n in NAMES},
                      {"conv1.conv": FixedLayer(500, 50), "fc": FixedLayer(100, 100)})


@pytest.fixture(scope="module")
def criteria():
    return {"limpq": toy_indicators(0), "limpq_init": toy_indicators(1), "hessian": toy_indicators(2, 100.0)}


def test_balanced_alpha_is_the_ratio_of_mean_steps():
    ind = toy_indicators(0, act_scale=3.0)
    w = [v for row in ind.weight_indicators.values() for v in row.values()]
    a = [v for row in ind.act_indicators.values() for v in row.values()]
    assert balanced_alpha(ind) == pytest.approx((sum(a) / len(a)) / (sum(w) / len(w)))
    zero_w = Indicators(NAMES, {n: {b: 0.0 for b in OPTIONS} for n in NAMES}, ind.act_indicators,
                        ind.layer_macs, ind.layer_params)
    assert balanced_alpha(zero_w) == 1.0


def test_float_has_no_policy(criteria):
    got = policy_for("float", 4, 0, Settings(), criteria)
    assert got == {"budget": None, "bitops": None, "alpha": None, "policy": None}


def test_uniform_policy_is_the_budget_pair_everywhere_and_fixed_layers_at_8(criteria):
    got = policy_for("uniform", 3, 0, Settings(), criteria)
    assert got["policy"] == {**{n: (3, 3) for n in NAMES}, "conv1.conv": (8, 8), "fc": (8, 8)}
    assert got["bitops"] == got["budget"] == uniform_budget(criteria["limpq"], 3, 3) and got["alpha"] is None


def test_random_policy_is_within_three_percent_below_the_budget_and_differs_by_seed(criteria):
    settings = Settings()
    draws = [policy_for("random", 4, seed, settings, criteria) for seed in range(3)]
    for got in draws:
        assert 0.97 * got["budget"] <= got["bitops"] <= got["budget"]
        assert set(got["policy"]) == {*NAMES, "conv1.conv", "fc"}
        assert all(w in OPTIONS and a in OPTIONS for n, (w, a) in got["policy"].items() if n in NAMES)
    assert draws[0]["policy"] != draws[1]["policy"] != draws[2]["policy"] != draws[0]["policy"]
    assert policy_for("random", 4, 1, settings, criteria) == draws[1]  # the seed fixes the draw
    with pytest.raises(InfeasibleBudgetError, match="no random policy"):
        random_policy(criteria["limpq"], 1.0, list(OPTIONS), random.Random(0), tries=10)


@pytest.mark.parametrize("method", ["limpq", "limpq_init", "hessian"])
def test_searched_policy_uses_its_own_indicators_and_balanced_alpha(criteria, method):
    got = policy_for(method, 4, 0, Settings(), criteria)
    assert got["alpha"] == pytest.approx(balanced_alpha(criteria[method]))
    assert got["bitops"] <= got["budget"] == uniform_budget(criteria["limpq"], 4, 4)
    assert got["policy"]["fc"] == (8, 8) and set(got["policy"]) == {*NAMES, "conv1.conv", "fc"}


def test_result_file_of_other_settings_starts_afresh(tmp_path):
    out = tmp_path / "pareto.json"
    old = Settings(steps=5)
    update_results(out, old, lambda r: r["points"].append({"method": "uniform", "budget_bits": 4, "seed": 0}))
    assert len(read_results(out, old)["points"]) == 1
    assert read_results(out, Settings(steps=6))["points"] == []
    update_results(out, Settings(steps=6), lambda r: r["points"].append({"method": "float"}))
    saved = json.loads(out.read_text())
    assert saved["settings"]["steps"] == 6 and saved["points"] == [{"method": "float"}]


def test_update_results_holds_the_lock_and_leaves_valid_json(tmp_path):
    out = tmp_path / "pareto.json"
    settings = Settings(steps=5)
    lock = out.with_name(f".{out.name}.lock")

    def change(result):
        with open(lock, "w") as other:  # a second process would block here
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result["points"].append({"method": "uniform", "seed": len(result["points"])})

    for i in range(3):
        update_results(out, settings, change)
        saved = json.loads(out.read_text())
        assert [p["seed"] for p in saved["points"]] == list(range(i + 1)) and "timestamp" in saved
    with open(lock, "w") as other:  # released afterwards
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)


@pytest.fixture
def no_training(monkeypatch, criteria):
    """``run`` with every slow part replaced; returns the list of fine-tuned (policy, seed) calls."""
    calls = []
    monkeypatch.setattr(limpq_pareto, "fashion_mnist_splits", lambda: None)
    monkeypatch.setattr(limpq_pareto, "load_pretrained", lambda name, device="cpu": None)
    monkeypatch.setattr(limpq_pareto, "criteria_for", lambda *args, **kwargs: criteria)
    return calls


def test_run_writes_every_point_once_and_skips_them_on_a_rerun(tmp_path, monkeypatch, no_training):
    out = tmp_path / "pareto.json"
    settings = Settings(budgets_bits=(3, 4), seeds=(0, 1), steps=7, batch_size=16, eval_images=100)
    methods = ("float", "uniform", "random", "limpq", "hessian")

    def fake_finetune(fp_model, policy, splits, steps, lr, step_lr, batch_size, eval_images, seed, device, counts):
        if out.is_file():  # the file is valid JSON after every update
            json.loads(out.read_text())
        assert (steps, batch_size, eval_images) == (7, 16, 100)  # the settings reach the fine-tune
        no_training.append((policy, seed))
        counts["step_halvings"] = 3 if seed == 1 else 0
        return 0.5

    monkeypatch.setattr(limpq_pareto, "finetune_policy", fake_finetune)
    result = run(settings, methods, out=out)
    per_seed = 1 + 4 * len(settings.budgets_bits)  # one float point, four methods at each budget
    assert len(no_training) == len(result["points"]) == 2 * per_seed
    saved = json.loads(out.read_text())
    assert saved == result
    assert {p["seed"]: p["step_halvings"] for p in saved["points"]} == {0: 0, 1: 3}  # each point records its guard
    assert (saved["settings"]["steps"], saved["settings"]["batch_size"], saved["settings"]["eval_images"]) == \
        (7, 16, 100)
    keys = {(p["method"], p["budget_bits"], p["seed"]) for p in saved["points"]}
    assert len(keys) == len(saved["points"])  # no point twice
    assert ("float", 32, 0) in keys and ("hessian", 3, 1) in keys
    for p in saved["points"]:
        assert {"method", "budget_bits", "seed", "accuracy"} <= p.keys() and p["accuracy"] == 0.5
        assert (p["policy"] is None) == (p["method"] == "float")

    no_training.clear()
    again = run(settings, methods, out=out)  # everything is there: nothing is fine-tuned again
    assert no_training == [] and again["points"] == saved["points"]

    saved["points"] = [p for p in saved["points"] if not (p["seed"] == 1 and p["method"] == "random")]
    out.write_text(json.dumps(saved))  # as if interrupted before seed 1's random points
    run(settings, methods, out=out)
    assert sorted(seed for _, seed in no_training) == [1, 1]
    assert len(json.loads(out.read_text())["points"]) == 2 * per_seed


def test_run_with_a_subset_of_seeds_keeps_the_settings(tmp_path, monkeypatch, no_training):
    out = tmp_path / "pareto.json"
    settings = Settings(budgets_bits=(4,), seeds=(0, 1, 2), steps=3)
    monkeypatch.setattr(limpq_pareto, "finetune_policy", lambda *args, counts: no_training.append(args[-2]) or 0.25)
    result = run(settings, ("uniform",), out=out, seeds=[2])
    assert no_training == [2] and [p["seed"] for p in result["points"]] == [2]
    assert json.loads(out.read_text())["settings"]["seeds"] == [0, 1, 2]


def test_shipped_joint_training_follows_limpq_recipe():
    from mpqlab.experiments.limpq_indicators import shipped_config

    config = shipped_config()
    assert config.steps * config.batch_size >= 165_000  # three epochs of the 55,000 training images
    assert config.optimizer == "sgd" and config.bn_per_bits


def test_a_corrupt_result_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "limpq_pareto.json"
    bad.write_text("{not json")
    with pytest.raises(DataFileError, match="not valid JSON"):
        limpq_pareto.read_results(bad, limpq_pareto.Settings())


def test_run_without_a_file_keeps_every_point_in_memory(monkeypatch, no_training):
    settings = Settings(budgets_bits=(3, 4), seeds=(0, 1), steps=3)
    monkeypatch.setattr(limpq_pareto, "finetune_policy", lambda *args, counts: no_training.append(args[-2]) or 0.25)
    result = run(settings, ("uniform",), out=None)
    assert len(result["points"]) == 4 and no_training == [0, 0, 1, 1]
