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
    assert ok.returncode == 0, ok.stderr
    assert len(json.loads(ok.stdout)["weight_bits"]) == 6
    bad = subprocess.run([sys.executable, "-m", "mpqlab", "search", "--indicators", str(ind_file),
                          "--bits", "4", "2", "--wb", "1", "--ab", "1"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("mpqlab search: error:") and "Traceback" not in bad.stderr
