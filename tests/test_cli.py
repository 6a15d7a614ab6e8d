"""``python -m mpqlab search``: JSON on stdout, one-line errors on stderr with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mpqlab.__main__ import main
from mpqlab.limpq.indicators import indicators_to_dict, save_indicators, synthetic_indicators
from mpqlab.limpq.search import min_bitops, size_budget, solve_policy, uniform_budget

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def ind_file(tmp_path):
    return save_indicators(tmp_path / "ind.json", synthetic_indicators(6, seed=4))


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_search_prints_the_same_policy_as_solve_policy(ind_file, capsys):
    code, out, err = run(["search", "--indicators", str(ind_file), "--bits", "6", "5", "4", "3", "2",
                          "--wb", "3", "--ab", "4", "--cr", "9", "--alpha", "1.5"], capsys)
    assert code == 0 and err == ""
    printed = json.loads(out)
    ind = synthetic_indicators(6, seed=4)
    direct = solve_policy(ind, [6, 5, 4, 3, 2], uniform_budget(ind, 3, 4), size_budget(ind, 9), alpha=1.5)
    for key in ("weight_bits", "act_bits", "bitops", "size_bits", "compression_ratio", "objective"):
        assert printed[key] == getattr(direct, key), key
    assert printed["bitops_budget"] == uniform_budget(ind, 3, 4)
    assert printed["compression_ratio"] >= 9


def test_search_without_budgets_picks_low_cost_bits(ind_file, capsys):
    code, out, _ = run(["search", "--indicators", str(ind_file), "--bits", "4", "2"], capsys)
    printed = json.loads(out)
    assert code == 0 and printed["bitops_budget"] is None and printed["size_budget_bits"] is None
    # No budget: every layer takes its cheapest pair; the highest option always survives the ban.
    assert all(b in (4, 2) for b in printed["weight_bits"] + printed["act_bits"])


def _error(argv, capsys):
    code, out, err = run(argv, capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_infeasible_budget_names_the_smallest_one(ind_file, capsys):
    err = _error(["search", "--indicators", str(ind_file), "--bits", "6", "4", "--wb", "2", "--ab", "2"], capsys)
    smallest = min_bitops(synthetic_indicators(6, seed=4), [6, 4])
    assert "BitOps budget" in err and str(smallest) in err


@pytest.mark.parametrize("argv, text", [
    (["--bits", "6", "7", "--wb", "3", "--ab", "4"], "[7]"),
    (["--bits", "6", "4", "--wb", "3"], "--ab"),
    (["--bits", "6", "4", "--wb", "0", "--ab", "4"], "w_bits"),
    (["--bits", "6", "4", "--cr", "-2"], "-2"),
    (["--bits", "6", "4", "--alpha", "nan"], "alpha"),
])
def test_bad_options_give_one_line_errors(ind_file, capsys, argv, text):
    assert text in _error(["search", "--indicators", str(ind_file)] + argv, capsys)


def test_missing_and_malformed_files_give_one_line_errors(tmp_path, capsys):
    assert "not found" in _error(["search", "--indicators", str(tmp_path / "no.json"), "--bits", "4"], capsys)
    raw = indicators_to_dict(synthetic_indicators(2, bit_options=(4, 2)))
    raw["weight_indicators"]["layer1"]["2"] = "lots"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(raw))
    err = _error(["search", "--indicators", str(bad), "--bits", "4", "2"], capsys)
    assert "weight_indicators['layer1']['2']" in err and "'lots'" in err


def _raw():
    return indicators_to_dict(synthetic_indicators(3, bit_options=(4, 2), seed=1))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("change, text", [
    (lambda r: r["layer_macs"].update({"layer0": 10**400}), "10**400"),  # float() of it overflows
    (lambda r: r["layer_params"].update({"layer2": 10**20}), "layer_params['layer2']"),
    (lambda r: r["layer_macs"].update({"layer1": 4096.5}), "4096.5"),
    (lambda r: r["layer_macs"].update({"layer1": 1e300}), "1e+300"),
    (lambda r: r["layer_macs"].update({"layer1": "4096"}), "'4096'"),
    (lambda r: r["layer_params"].update({"layer1": -8}), "-8"),
    (lambda r: r["layer_params"].update({"layer1": None}), "None"),
    (lambda r: r["fixed_layers"]["first"].update({"w_bits": 4.0}), "w_bits"),
    (lambda r: r["fixed_layers"]["last"].update({"macs": 10**400}), "fixed_layers['last']['macs']"),
    (lambda r: r["weight_indicators"]["layer0"].update({"4": 10**400}), "10**400"),  # an int, but not finite
    (lambda r: r["act_indicators"]["layer2"].update({"2": float("nan")}), "nan"),
    (lambda r: r["act_indicators"]["layer2"].update({"2": float("inf")}), "inf"),
    (lambda r: r["act_indicators"]["layer2"].update({"2": [0.1]}), "[0.1]"),
    (lambda r: r["act_indicators"].update({"layer2": []}), "layer2"),
    (lambda r: r["weight_indicators"]["layer1"].update({"04": 0.3}), "twice"),
    (lambda r: r.pop("act_indicators"), "act_indicators"),
    (lambda r: r.update({"layer_names": ["layer0", 7]}), "layer_names"),
    (lambda r: r.update({"fixed_layers": [1, 2]}), "fixed_layers"),
    (lambda r: r["fixed_layers"].update({"layer0": r["fixed_layers"]["first"]}), "layer0"),
])
def test_malformed_indicator_files_exit_2_with_one_line(tmp_path, capsys, change, text):
    raw = _raw()
    change(raw)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(raw))  # json writes NaN, Infinity and 400-digit ints; Python reads them back
    for budget in ([], ["--wb", "4", "--ab", "4", "--cr", "9"]):
        err = _error(["search", "--indicators", str(bad), "--bits", "4", "2"] + budget, capsys)
        assert err.startswith("mpqlab search: error: ") and str(bad) in err and text in err, err


@pytest.mark.parametrize("text, error", [
    ('{"layer_names": [' + "[" * 100000 + "]" * 100000 + "]}", "not valid JSON"),  # nesting: RecursionError
    ('{"layer_macs": ' + "9" * 5000 + "}", "not valid JSON"),  # over Python's 4300-digit int limit
    ("[1, 2]", "expected a JSON object"),
    ('{"layer_names": []}', "missing key"),
])
def test_unparseable_indicator_files_exit_2_with_one_line(tmp_path, capsys, text, error):
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    assert error in _error(["search", "--indicators", str(bad), "--bits", "4", "2"], capsys)


def test_a_huge_layer_macs_exits_2_with_one_line_as_a_program(tmp_path):
    raw = _raw()
    raw["layer_macs"]["layer0"] = 10**400
    bad = tmp_path / "huge.json"
    bad.write_text(json.dumps(raw))
    run = subprocess.run([sys.executable, "-m", "mpqlab", "search", "--indicators", str(bad), "--bits", "4", "2",
                          "--wb", "4", "--ab", "4"], capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("mpqlab search: error: ")
    assert "layer_macs['layer0']" in run.stderr and "10**400" in run.stderr


def test_usage_errors_exit_2():
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["search", "--indicators", "x.json"])  # --bits is required
    assert info.value.code == 2


def test_python_dash_m_runs_as_a_program(ind_file):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ok = subprocess.run([sys.executable, "-m", "mpqlab", "search", "--indicators", str(ind_file),
                         "--bits", "4", "2", "--wb", "4", "--ab", "2"],
                        capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    # The whole of stdout is the JSON: nothing else (HiGHS's banner, printed from C) may reach it.
    assert ok.stdout.startswith("{\n") and len(json.loads(ok.stdout)["weight_bits"]) == 6
    bad = subprocess.run([sys.executable, "-m", "mpqlab", "search", "--indicators", str(ind_file),
                          "--bits", "4", "2", "--wb", "1", "--ab", "1"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("mpqlab search: error:") and "Traceback" not in bad.stderr
