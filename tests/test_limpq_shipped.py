"""The shipped LIMPQ indicator files (data/results/limpq_<model>.json): they load, match their model,
say how they were made, look like learned step sizes, and the search runs on them."""

from __future__ import annotations

import json

import pytest

from mpqlab.cost import layer_table
from mpqlab.data import repo_data_dir
from mpqlab.limpq.indicators import load_indicators
from mpqlab.limpq.joint import searchable_layers
from mpqlab.limpq.search import min_bitops, size_budget, solve_policy, uniform_budget
from mpqlab.models import mobilenet_v1_small, resnet20

MODELS = {"mobilenet_v1_small": mobilenet_v1_small, "resnet20": resnet20}
OPTIONS = [2, 3, 4, 5, 6]


def shipped(model: str):
    path = repo_data_dir() / "results" / f"limpq_{model}.json"
    if not path.is_file():
        pytest.skip(f"{path} not produced yet (python -m mpqlab.experiments.limpq_indicators --model {model})")
    return path


@pytest.fixture(scope="module", params=sorted(MODELS))
def model_name(request):
    return request.param


def test_file_loads_and_matches_its_model(model_name):
    ind = load_indicators(shipped(model_name))
    model = MODELS[model_name]()
    layers, fixed = searchable_layers(model)
    assert ind.layer_names == layers
    assert list(ind.fixed_layers) == fixed
    assert all(f.w_bits == f.a_bits == 8 for f in ind.fixed_layers.values())
    table = layer_table(model, (1, 1, 32, 32))
    assert ind.layer_macs == {n: int(table.macs[n]) for n in layers}
    assert ind.layer_params == {n: int(table.params[n]) for n in layers}
    for table_ in (ind.weight_indicators, ind.act_indicators):
        assert all(sorted(table_[n]) == OPTIONS and min(table_[n].values()) > 0 for n in layers)


def test_file_records_how_it_was_made(model_name):
    raw = json.loads(shipped(model_name).read_text())
    assert raw["model"] == model_name and raw["seed"] == 0 and raw["threads"] == 1
    assert raw["source"].startswith("python -m mpqlab.experiments.limpq_indicators")
    assert f"--steps {raw['settings']['steps']}" in raw["source"]
    assert len(raw["losses"]["loss_random"]) == raw["settings"]["steps"]
    assert raw["seconds"] >= raw["train_seconds"] > 0 and raw["timestamp"].endswith("+00:00")
    log = shipped(model_name).with_suffix(".log")
    assert log.is_file() and raw["source"] in log.read_text()


def test_indicators_fall_with_the_bit_width(model_name):
    """A step size is about range / 2^b: fewer bits, larger step. Short joint training leaves some
    wrong-way neighbours (the search bans them): ResNet-20 has 10 of 72 weight pairs and 1 of 72
    activation pairs, MobileNetV1 2 of 104 weight and 7 of 104 activation pairs (notebook 10 counts
    them). But every layer's 2-bit step is above its 6-bit one,
    its smallest step is at 5 or 6 bits, and most neighbours fall."""
    ind = load_indicators(shipped(model_name))
    for table in (ind.weight_indicators, ind.act_indicators):
        assert all(table[n][2] > table[n][6] for n in ind.layer_names)
        assert all(min(table[n], key=table[n].get) >= 5 for n in ind.layer_names)
        falling = [table[n][b] > table[n][b + 1] for n in ind.layer_names for b in OPTIONS[:-1]]
        assert sum(falling) >= 0.8 * len(falling)


def test_search_runs_and_more_budget_never_costs_objective(model_name):
    ind = load_indicators(shipped(model_name))
    objectives = []  # from the smallest reachable BitOps (W2A2 itself may be out: some 2-bit values are banned)
    for budget in [min_bitops(ind, OPTIONS)] + [uniform_budget(ind, b, b) for b in (3, 4, 5, 6)]:
        result = solve_policy(ind, OPTIONS, budget)
        assert result.status == "Optimal" and result.bitops <= budget
        assert set(result.weight_bits) | set(result.act_bits) <= set(OPTIONS)
        objectives.append(result.objective)
    assert all(more <= less + 1e-12 for less, more in zip(objectives, objectives[1:]))
    assert objectives[0] > objectives[-1]
    both = solve_policy(ind, OPTIONS, uniform_budget(ind, 4, 4), size_budget(ind, 8.0))
    assert both.compression_ratio >= 8.0 and both.objective >= objectives[2] - 1e-12  # W4A4 alone
