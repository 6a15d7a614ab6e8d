"""LIMPQ search: the published ResNet-50 policy, brute force on small instances, errors, indicator files."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpqlab.__main__ import main
from mpqlab.errors import BitWidthError, DataFileError, InfeasibleBudgetError, QuantParamError
from mpqlab.limpq.indicators import (
    FixedLayer,
    Indicators,
    check_indicators,
    indicators_to_dict,
    load_indicators,
    save_indicators,
    synthetic_indicators,
)
from mpqlab.limpq.search import (
    _solve,
    allowed_bits,
    min_bitops,
    min_size_bits,
    reduced_cost_filter,
    size_budget,
    solve_policy,
    uniform_budget,
)

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).resolve().parents[2] / "shared/fixtures/limpq_resnet50_indicators.json"
needs_fixture = pytest.mark.skipif(not FIXTURE.exists(), reason=f"LIMPQ fixture not found at {FIXTURE}")


# --- the paper's published policy -------------------------------------------------------------

@needs_fixture
def test_cli_reproduces_published_resnet50_policy(capsys):
    expected = json.loads(FIXTURE.read_text())["expected"]
    code = main(["search", "--indicators", str(FIXTURE), "--bits", "6", "5", "4", "3", "2",
                 "--wb", "3", "--ab", "4", "--cr", "12.2", "--alpha", "2"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["weight_bits"] == expected["weight_bits"]
    assert out["act_bits"] == expected["act_bits"]
    assert out["objective"] == pytest.approx(expected["objective"], abs=1e-6)
    assert out["bitops"] == expected["bitops_used"] == 48283189248
    assert out["bitops_budget"] == expected["bitops_budget"]
    assert out["compression_ratio"] == pytest.approx(expected["compression_ratio"], abs=5e-4)


@needs_fixture
def test_fixture_bans_exactly_the_points_named_in_its_recipe():
    ind = load_indicators(FIXTURE)
    options = [6, 5, 4, 3, 2]
    w_banned = {n: sorted(set(options) - set(allowed_bits(ind.weight_indicators[n], options)))
                for n in ind.layer_names}
    a_banned = [n for n in ind.layer_names if allowed_bits(ind.act_indicators[n], options) != options]
    assert {n: b for n, b in w_banned.items() if b} == {"layer4.0.downsample.0": [5], "layer4.2.conv3": [5]}
    assert a_banned == []


# --- brute force: the ILP returns the true optimum --------------------------------------------

def reference_allowed(scores, options):
    """The ban rule written out again, independently: compare each option with the next higher one."""
    ordered = sorted(options)
    return [b for b, higher in zip(ordered, ordered[1:] + [None]) if higher is None or not scores[b] < scores[higher]]


def brute_force(ind, options, bitops_budget, size_budget_bits, alpha):
    """min objective over every policy (None if none fits), enumerating all combinations."""
    names = ind.layer_names
    choices = [[(bw, ba) for bw in reference_allowed(ind.weight_indicators[n], options)
                for ba in reference_allowed(ind.act_indicators[n], options)] for n in names]
    fixed = sum(f.params * f.w_bits for f in ind.fixed_layers.values())
    best = None
    for policy in itertools.product(*choices):
        bitops = sum(ind.layer_macs[n] * bw * ba for n, (bw, ba) in zip(names, policy))
        size = fixed + sum(ind.layer_params[n] * bw for n, (bw, _) in zip(names, policy))
        if (bitops_budget is not None and bitops > bitops_budget) or (
                size_budget_bits is not None and size > size_budget_bits):
            continue
        cost = sum(ind.act_indicators[n][ba] + alpha * ind.weight_indicators[n][bw]
                   for n, (bw, ba) in zip(names, policy))
        best = cost if best is None else min(best, cost)
    return best


@st.composite
def instances(draw):
    n_layers = draw(st.integers(1, 4))
    options = draw(st.lists(st.integers(2, 8), min_size=1, max_size=3, unique=True))
    scale = draw(st.sampled_from([1e-7, 1.0, 1e3]))  # tiny scales are where CBC's 1e-5 cutoff would bite
    score = st.floats(0.0, 1.0, allow_nan=False, allow_infinity=False)
    names = [f"l{i}" for i in range(n_layers)]

    def table():
        return {n: {b: draw(score) * scale for b in options} for n in names}

    fixed = {"first": FixedLayer(macs=10, params=draw(st.integers(1, 500)))} if draw(st.booleans()) else {}
    return Indicators(names, table(), table(),
                      {n: draw(st.integers(1, 1000)) for n in names},
                      {n: draw(st.integers(1, 1000)) for n in names}, fixed), options


@settings(max_examples=60, deadline=None)
@given(inst=instances(), f_bitops=st.none() | st.floats(0, 1.2), f_size=st.none() | st.floats(0, 1.2),
       alpha=st.sampled_from([0.0, 0.5, 2.0]))
def test_solver_matches_brute_force(inst, f_bitops, f_size, alpha):
    ind, options = inst
    # Budgets from the smallest reachable (f = 0) to beyond the largest (f = 1.2).
    lo_bitops, lo_size = min_bitops(ind, options), min_size_bits(ind, options)
    hi_bitops = sum(m * max(options) ** 2 for m in ind.layer_macs.values())
    hi_size = lo_size + sum(p * max(options) for p in ind.layer_params.values())
    bitops_budget = None if f_bitops is None else lo_bitops + f_bitops * (hi_bitops - lo_bitops)
    size_budget_bits = None if f_size is None else lo_size + f_size * (hi_size - lo_size)

    result = solve_policy(ind, options, bitops_budget, size_budget_bits, alpha=alpha)
    best = brute_force(ind, options, bitops_budget, size_budget_bits, alpha)
    # Optimal up to the solver's floating-point tolerance on costs normalised to [0, 1].
    spread = max(max(c) - min(c) for c in (
        [ind.act_indicators[n][a] + alpha * ind.weight_indicators[n][w] for w in options for a in options]
        for n in ind.layer_names))
    assert result.objective == pytest.approx(best, rel=1e-12, abs=1e-9 * spread + 1e-300)
    assert result.status == "Optimal"
    if bitops_budget is not None:
        assert result.bitops <= bitops_budget
    if size_budget_bits is not None:
        assert result.size_bits <= size_budget_bits


@settings(max_examples=60, deadline=None)
@given(inst=instances(), f_bitops=st.floats(0, 1), f_size=st.floats(0, 1),
       multipliers=st.tuples(st.floats(0, 10), st.floats(0, 10)))
def test_reduced_cost_filter_keeps_every_optimal_policy_for_any_multipliers(inst, f_bitops, f_size, multipliers):
    """The Lagrangian bound holds for every m >= 0, so with upper = the optimum no optimal pair is dropped."""
    ind, options = inst
    names, alpha = ind.layer_names, 2.0
    choices = [[(bw, ba) for bw in options for ba in options] for _ in names]
    layer_of = [i for i, c in enumerate(choices) for _ in c]
    flat = [(i, bw, ba) for i, c in enumerate(choices) for bw, ba in c]
    costs = [ind.act_indicators[names[i]][ba] + alpha * ind.weight_indicators[names[i]][bw] for i, bw, ba in flat]
    bitops_row = [ind.layer_macs[names[i]] * bw * ba for i, bw, ba in flat]
    size_row = [ind.layer_params[names[i]] * bw for i, bw, _ in flat]
    def budget(row, f):  # from the smallest reachable (f = 0) to the largest use (f = 1)
        lo, hi = (sum(pick(r) for r in _per_layer(row, layer_of)) for pick in (min, max))
        return math.floor(lo + f * (hi - lo))

    rows = {"bitops": (bitops_row, budget(bitops_row, f_bitops)), "size": (size_row, budget(size_row, f_size))}
    starts = [layer_of.index(i) for i in range(len(names))]
    feasible = [(sum(costs[j] for j in pick), pick)
                for pick in itertools.product(*(range(s, s + len(c)) for s, c in zip(starts, choices)))
                if all(sum(row[j] for j in pick) <= rhs for row, rhs in rows.values())]
    if not feasible:
        return
    best = min(cost for cost, _ in feasible)
    keep = reduced_cost_filter(layer_of, costs, rows, dict(zip(rows, multipliers)), best)
    for cost, pick in feasible:
        if cost == best:
            assert all(keep[j] for j in pick)


def _per_layer(row, layer_of):
    out = {}
    for value, layer in zip(row, layer_of):
        out.setdefault(layer, []).append(value)
    return out.values()


@pytest.mark.parametrize("budgets", ["bitops", "size", "both"])
def test_presolve_gives_the_same_optimum_on_27_layer_problems(budgets):
    """The exact reduction before the ILP changes the speed, never the answer (brute force is out of reach here)."""
    ind, options = synthetic_indicators(27, seed=4), [6, 5, 4, 3, 2]
    bitops = uniform_budget(ind, 3, 4) if budgets != "size" else None
    size = size_budget(ind, 10.0) if budgets != "bitops" else None
    fast = solve_policy(ind, options, bitops, size)
    full = solve_policy(ind, options, bitops, size, presolve=False)
    assert fast.objective == pytest.approx(full.objective, rel=1e-12)
    assert fast.objective <= full.objective + 1e-12


def test_budget_at_the_minimum_is_feasible_and_one_below_is_not():
    ind, options = synthetic_indicators(6, seed=3), [6, 4, 2]
    lowest = min_bitops(ind, options)
    assert solve_policy(ind, options, bitops_budget=lowest).bitops == lowest
    with pytest.raises(InfeasibleBudgetError, match=str(lowest)):
        solve_policy(ind, options, bitops_budget=lowest - 1)
    smallest = min_size_bits(ind, options)
    assert solve_policy(ind, options, size_budget_bits=smallest).size_bits == smallest
    with pytest.raises(InfeasibleBudgetError, match=str(smallest)):
        solve_policy(ind, options, size_budget_bits=smallest - 1)


def test_solving_prints_nothing_not_even_the_highs_banner(capfd):
    """highspy 1.16 prints "Running HiGHS ..." from C on the process's stdout (fd 1) when its first
    solver is built, once per process: so the solve runs in a fresh child writing to capfd's fd 1."""
    code = ("from mpqlab.limpq.indicators import synthetic_indicators as s\n"
            "from mpqlab.limpq.search import size_budget, solve_policy, uniform_budget\n"
            "ind = s(6, seed=4)\n"
            "r = solve_policy(ind, [6, 4, 2], uniform_budget(ind, 4, 4), size_budget(ind, 8.0))  # LP, then ILP\n"
            "assert r.status == 'Optimal'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    assert capfd.readouterr() == ("", "")


def test_lp_relaxation_gives_the_budget_row_its_dual_price():
    """Two layers, pairs (cost 0, BitOps 4) and (cost 1, BitOps 1), budget 5: one layer must go low,
    the LP spreads it, and each unit of budget is worth 1/3 of cost, the price reduced_cost_filter uses."""
    status, x, multipliers = _solve([0, 0, 1, 1], [0.0, 1.0, 0.0, 1.0], {"bitops": ([4, 1, 4, 1], 5)},
                                    "highs", relax=True)
    assert status == "Optimal" and x[1] + x[3] == pytest.approx(1.0)
    assert multipliers["bitops"] == pytest.approx(1 / 3)


@pytest.mark.filterwarnings("ignore:PULP_CBC_CMD is deprecated")
def test_cbc_is_feasible_but_never_better_than_highs():
    ind, options = synthetic_indicators(8, seed=1), [6, 5, 4, 3, 2]
    budget, size = uniform_budget(ind, 3, 4), size_budget(ind, 10.0)
    highs = solve_policy(ind, options, budget, size)
    cbc = solve_policy(ind, options, budget, size, solver="cbc")
    assert cbc.bitops <= budget and cbc.size_bits <= size
    assert cbc.objective >= highs.objective - 1e-12


# --- small pure pieces -------------------------------------------------------------------------

def test_ban_rule_compares_with_the_next_higher_option_without_cascading():
    assert allowed_bits({6: 1.0, 5: 0.5, 4: 2.0, 3: 1.5, 2: 3.0}, [6, 5, 4, 3, 2]) == [6, 4, 2]
    # 5 is banned (0.5 < 1.0); 4 is compared with 5's own value and stays.
    assert allowed_bits({6: 1.0, 5: 0.5, 4: 0.7}, [4, 5, 6]) == [6, 4]
    assert allowed_bits({8: 1.0, 4: 0.5, 2: 3.0}, [8, 4, 2]) == [8, 2]


def test_budgets_and_result_views():
    ind = synthetic_indicators(5, seed=0)
    assert uniform_budget(ind, 3, 4) == 12 * sum(ind.layer_macs.values())
    assert size_budget(ind, 8.0) == 4 * ind.total_params()
    result = solve_policy(ind, [4, 2], bitops_budget=uniform_budget(ind, 3, 3))
    assert list(result.policy)[:5] == ind.layer_names
    assert result.policy["first"] == (8, 8) and result.policy["last"] == (8, 8)
    assert [result.policy[n] for n in ind.layer_names] == list(zip(result.weight_bits, result.act_bits))
    assert result.compression_ratio == pytest.approx(32 * ind.total_params() / result.size_bits)
    json.dumps(result.to_dict())  # JSON-ready


@pytest.mark.parametrize("call, error, text", [
    (lambda ind: solve_policy(ind, []), BitWidthError, "empty"),
    (lambda ind: solve_policy(ind, [6, 7]), BitWidthError, "[7]"),
    (lambda ind: solve_policy(ind, [6, 40]), BitWidthError, "40"),
    (lambda ind: solve_policy(ind, [6, 2], bitops_budget=-5), QuantParamError, "-5"),
    (lambda ind: solve_policy(ind, [6, 2], size_budget_bits=float("nan")), QuantParamError, "nan"),
    (lambda ind: solve_policy(ind, [6, 2], bitops_budget="big"), QuantParamError, "big"),
    (lambda ind: solve_policy(ind, [6, 2], alpha=-1.0), QuantParamError, "-1.0"),
    (lambda ind: solve_policy(ind, [6, 2], solver="gurobi"), QuantParamError, "gurobi"),
    (lambda ind: uniform_budget(ind, 3, 0), BitWidthError, "0"),
    (lambda ind: size_budget(ind, 0.0), QuantParamError, "0.0"),
])
def test_bad_arguments_raise_clear_errors(call, error, text):
    with pytest.raises(error) as info:
        call(synthetic_indicators(3, bit_options=(6, 4, 2)))
    assert text in str(info.value)


# --- indicator files ---------------------------------------------------------------------------

def test_save_then_load_round_trips_and_keeps_extra_keys(tmp_path):
    ind = synthetic_indicators(4, seed=2)
    path = save_indicators(tmp_path / "sub" / "ind.json", ind, extra={"source": "test"})
    assert load_indicators(path) == ind
    assert json.loads(path.read_text())["source"] == "test"
    assert [p.name for p in path.parent.iterdir()] == ["ind.json"]  # no temp file left behind


def test_save_refuses_bad_data_and_leaves_no_file(tmp_path):
    ind = synthetic_indicators(2)
    ind.weight_indicators["layer0"][4] = math.nan
    with pytest.raises(DataFileError, match="nan"):
        save_indicators(tmp_path / "ind.json", ind)
    assert list(tmp_path.iterdir()) == []


@needs_fixture
def test_fixture_is_a_valid_indicator_file():
    ind = load_indicators(FIXTURE)
    assert len(ind.layer_names) == 52 and set(ind.fixed_layers) == {"conv1", "fc"}
    assert ind.weight_indicators["layer1.0.conv1"][6] == pytest.approx(0.022435298189520836)


def _broken(change):
    raw = indicators_to_dict(synthetic_indicators(2, bit_options=(4, 2)))
    change(raw)
    return raw


@pytest.mark.parametrize("change, text", [
    (lambda r: r.pop("layer_macs"), "layer_macs"),
    (lambda r: r["weight_indicators"]["layer1"].update({"4": "high"}), "'high'"),
    (lambda r: r["act_indicators"]["layer0"].update({"2": float("nan")}), "nan"),
    (lambda r: r["act_indicators"]["layer0"].update({"two": 0.1}), "'two'"),
    (lambda r: r["layer_params"].pop("layer1"), "layer1"),
    (lambda r: r["layer_macs"].update({"layer0": -3}), "-3"),
    (lambda r: r["layer_names"].append("layer9"), "layer9"),
    (lambda r: r["fixed_layers"]["first"].pop("w_bits"), "first"),
    (lambda r: r.update({"layer_names": "layer0"}), "layer_names"),
])
def test_malformed_indicator_files_name_the_bad_value(tmp_path, change, text):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_broken(change)))
    with pytest.raises(DataFileError) as info:
        load_indicators(path)
    assert text in str(info.value) and str(path) in str(info.value)


def _bad_in_memory(change):
    ind = synthetic_indicators(4, seed=1)
    change(ind)
    return ind


@pytest.mark.timeout(20)  # a NaN with a budget used to stall HiGHS 1.16
@pytest.mark.parametrize("budget", [False, True])
@pytest.mark.parametrize("change, text", [
    (lambda i: i.weight_indicators["layer0"].update({4: math.nan}), "weight_indicators['layer0'][4]"),
    (lambda i: i.act_indicators["layer3"].update({2: -math.inf}), "-inf"),
    (lambda i: i.act_indicators["layer1"].update({6: "0.3"}), "'0.3'"),
    (lambda i: i.weight_indicators["layer2"].update({40: 0.1}), "40"),
    (lambda i: i.weight_indicators.pop("layer2"), "layer2"),
    (lambda i: i.layer_macs.update({"layer1": 10**400}), "10**400"),
    (lambda i: i.layer_macs.update({"layer1": 1e300}), "1e+300"),
    (lambda i: i.layer_macs.update({"layer1": 4096.5}), "4096.5"),
    (lambda i: i.layer_params.update({"layer0": 0}), "layer_params['layer0']"),
    (lambda i: i.layer_params.update({"layer0": True}), "True"),
    (lambda i: i.fixed_layers.update({"last": FixedLayer(macs=-5, params=10)}), "-5"),
    (lambda i: i.fixed_layers.update({"last": FixedLayer(macs=5, params=10, w_bits=0)}), "w_bits"),
    (lambda i: i.layer_names.append("layer0"), "repeats"),
])
def test_in_memory_indicators_are_checked_like_a_file(change, text, budget):
    ind = _bad_in_memory(change)
    with pytest.raises(DataFileError, match="indicators passed to solve_policy") as info:
        solve_policy(ind, [6, 4, 2], bitops_budget=uniform_budget(synthetic_indicators(4, seed=1), 4, 4)
                     if budget else None)
    assert text in str(info.value)


def test_in_memory_checks_accept_numpy_numbers_and_tuples():
    np = pytest.importorskip("numpy")
    ind = synthetic_indicators(4, seed=1)
    plain = solve_policy(ind, [6, 4, 2], uniform_budget(ind, 4, 4))
    ind.layer_names = tuple(ind.layer_names)
    ind.weight_indicators = {n: {np.int64(b): np.float32(v) for b, v in row.items()}
                             for n, row in ind.weight_indicators.items()}
    ind.layer_macs = {n: np.int64(m) for n, m in ind.layer_macs.items()}
    again = solve_policy(ind, [6, 4, 2], uniform_budget(synthetic_indicators(4, seed=1), 4, 4))
    assert again.weight_bits == plain.weight_bits and again.act_bits == plain.act_bits
    assert check_indicators(synthetic_indicators(4, seed=1)) == synthetic_indicators(4, seed=1)
    with pytest.raises(DataFileError, match="expected an Indicators object"):
        check_indicators({"layer_names": ["a"]})


def test_indicators_that_overflow_the_cost_raise_instead_of_solving_with_inf():
    ind = synthetic_indicators(3, seed=1)
    ind.weight_indicators["layer0"][4] = 1e308  # finite, but s_a + 2 * s_w is not
    with pytest.raises(QuantParamError, match="overflows"):
        solve_policy(ind, [6, 4, 2])


def test_missing_and_non_json_files(tmp_path):
    with pytest.raises(DataFileError, match="not found"):
        load_indicators(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(DataFileError, match="not valid JSON"):
        load_indicators(tmp_path / "x.json")


def test_saved_indicator_files_are_readable_by_everyone(tmp_path):
    import stat

    from mpqlab.limpq.indicators import load_indicators, save_indicators, synthetic_indicators

    path = save_indicators(tmp_path / "ind.json", synthetic_indicators(3))
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # the shared atomic writer, not mkstemp's owner-only 0600
    assert load_indicators(path).layer_names == synthetic_indicators(3).layer_names
