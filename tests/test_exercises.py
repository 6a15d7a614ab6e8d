"""Instructor mode of mpqlab.exercises: reveal one solution, all of a notebook's, or every one as checks run."""

import pytest

from mpqlab.exercises import SOLUTIONS_ENV, Check, reveal, reveal_all, solutions_shown, with_solution
from mpqlab.exercises import nb00, nb05


def stub(*args):
    raise NotImplementedError


def test_solutions_are_hidden_by_default(monkeypatch, capsys):
    monkeypatch.delenv(SOLUTIONS_ENV, raising=False)
    assert not solutions_shown()
    assert nb00.check_conv_macs(stub) is False
    out = capsys.readouterr().out
    assert "FAIL - conv MACs" in out
    assert "conv_macs_solution" not in out and "return h_out" not in out


def test_reveal_prints_one_solution(capsys):
    reveal(nb00.check_conv_macs)
    out = capsys.readouterr().out
    assert "def conv_macs_solution" in out and "bitops_solution" not in out


def test_reveal_all_prints_every_solution_of_a_notebook_in_order(capsys):
    names = reveal_all(nb05)
    out = capsys.readouterr().out
    assert names == ["check_relative_error", "check_highway_block"]
    assert out.index("def relative_error_solution") < out.index("def highway_block_solution")


def test_reveal_all_on_a_module_without_checks_says_so(capsys):
    import mpqlab.errors

    assert reveal_all(mpqlab.errors) == []
    assert "no checks" in capsys.readouterr().out


@pytest.mark.parametrize("value, shown", [("1", True), ("0", False), ("", False), ("yes", False)])
def test_instructor_mode_follows_the_environment_variable(monkeypatch, value, shown):
    monkeypatch.setenv(SOLUTIONS_ENV, value)
    assert solutions_shown() is shown


def test_instructor_mode_prints_the_solution_under_the_verdict(monkeypatch, capsys):
    monkeypatch.setenv(SOLUTIONS_ENV, "1")
    assert nb00.check_bitops(stub) is False  # the verdict is unchanged: revealing is not passing
    out = capsys.readouterr().out
    assert out.index("FAIL - BitOps of a policy") < out.index("def bitops_solution")
    assert nb00.check_bitops(nb00.check_bitops.solution) is True


def test_with_solution_keeps_the_check_name_doc_and_solution():
    def square_solution(x):
        return x * x

    @with_solution(square_solution)
    def check_square(fn) -> bool:
        """Exercise: square a number."""
        c = Check("square")
        c.close(c.run(fn, 3), 9, "fn(3)")
        return c.verdict()

    assert check_square.__name__ == "check_square"
    assert check_square.__doc__ == "Exercise: square a number."
    assert check_square.solution is square_solution
    assert check_square(square_solution) is True
    assert check_square(lambda x: x + x) is False
