import torch

from mpqlab.exercises.nb05 import (
    check_highway_block, check_relative_error, highway_block_solution, relative_error_solution,
)


def not_implemented(*args):
    raise NotImplementedError


def test_reference_solutions_pass(capsys):
    assert check_relative_error(relative_error_solution)
    assert check_highway_block(highway_block_solution)
    assert capsys.readouterr().out.count("PASS") == 2


def test_stubs_fail_without_raising(capsys):
    assert not check_relative_error(not_implemented)
    assert not check_highway_block(not_implemented)
    out = capsys.readouterr().out
    assert out.count("FAIL") == 2 and "NotImplementedError" in out


def test_wrong_answers_fail():
    assert not check_relative_error(lambda y_hat, y: float(((y_hat - y).abs() / y.abs()).mean()))  # per element
    assert not check_relative_error(lambda y_hat, y: float((y_hat - y).norm() / y_hat.norm()))  # wrong reference
    # quantizes the sum instead of the skip
    assert not check_highway_block(lambda x, f, qb, qs: qs(torch.relu(f(qb(x)) + x)))
    # feeds the branch the skip's copy
    assert not check_highway_block(lambda x, f, qb, qs: torch.relu(f(qs(x)) + qs(x)))
    # ReLU before the addition
    assert not check_highway_block(lambda x, f, qb, qs: torch.relu(f(qb(x))) + qs(x))
