"""mpqlab.exercises as a whole: instructor mode, and the rules that make every self-check judge fairly
(learners' functions get copies of their arguments; anything they raise or return wrongly is a FAIL,
never a traceback)."""

import importlib

import numpy as np
import pytest
import torch

from mpqlab.exercises import FAILED, SOLUTIONS_ENV, Check, exercise, reveal, reveal_all, solutions_shown
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


def square_solution(x):
    return x * x


@exercise("square", square_solution, hint="multiply x by itself")
def check_square(c, fn) -> None:
    """Exercise: square a number."""
    got = c.run(fn, 3)
    if got is not FAILED:
        c.close(got, 9, "fn(3)")


def test_exercise_makes_a_check_with_the_name_doc_and_solution(capsys):
    assert check_square.__name__ == "check_square"
    assert check_square.__doc__ == "Exercise: square a number."
    assert check_square.__module__ == __name__
    assert check_square.solution is square_solution
    assert check_square(square_solution) is True
    assert check_square(lambda x: x + x) is False
    out = capsys.readouterr().out
    assert "PASS - square" in out and "FAIL - square" in out and "Hint: multiply x by itself" in out


def test_an_exception_while_judging_is_a_fail_not_a_traceback(capsys):
    @exercise("a tensor", None)
    def check_tensor(c, fn) -> None:
        got = c.run(fn)
        if got is not FAILED:
            c.expect(bool((got == torch.ones(3)).all()), "expected ones")  # raises for a (2, 2) tensor

    assert check_tensor(lambda: torch.ones(2, 2)) is False
    out = capsys.readouterr().out
    assert "FAIL - a tensor" in out and "checking your answer raised RuntimeError" in out


def test_run_hands_the_learner_copies_of_its_arguments():
    x, arr, items, table = torch.arange(4.0), np.arange(3.0), [torch.ones(2), 5], {"a": [1, 2]}

    def vandal(x, arr, items, table):
        x.zero_()
        arr[:] = -1
        items[0].mul_(7)
        items.append("extra")
        table["a"].clear()
        return 0

    assert Check("copies").run(vandal, x, arr, items, table) == 0
    assert x.tolist() == [0.0, 1.0, 2.0, 3.0] and arr.tolist() == [0.0, 1.0, 2.0]
    assert items[0].tolist() == [1.0, 1.0] and len(items) == 2 and table == {"a": [1, 2]}


def test_run_passes_functions_through_so_the_check_can_count_calls():
    calls = []
    Check("calls").run(lambda f: f(), lambda: calls.append(1))
    assert calls == [1]


def test_run_reports_none_and_exceptions_once():
    c = Check("run")
    assert c.run(lambda: None) is FAILED and c.run(lambda: None) is FAILED
    assert c.failures == ["your function returned None: did you forget `return`?"]
    assert c.run(lambda: None, may_return_none=True) is None
    assert c.run(lambda x: 1 / x, 0) is FAILED
    assert "raised ZeroDivisionError" in c.failures[-1]
    assert c.run(lambda x: x, torch.zeros(100)) is not FAILED


def _all_checks():
    checks = []
    for i in range(11):
        module = importlib.import_module(f"mpqlab.exercises.nb{i:02d}")
        checks += [(f"nb{i:02d}.{name}", obj) for name, obj in vars(module).items()
                   if name.startswith("check_") and getattr(obj, "__module__", None) == module.__name__]
    return checks


ALL_CHECKS = _all_checks()


def returns_none(*args, **kwargs):
    pass  # the commonest bug: the answer is computed but never returned


def raises_runtime_error(*args, **kwargs):
    raise RuntimeError("boom from the learner's code")


class NotAnAnswer:
    pass


WRONG_TYPES = {"a string": "not an answer", "a list": [1.0, 2.0], "a 2-D tensor": torch.zeros(3, 3),
               "an object": NotAnAnswer()}


def test_every_notebook_has_checks():
    assert len(ALL_CHECKS) >= 28
    assert {name.split(".")[0] for name, _ in ALL_CHECKS} == {f"nb{i:02d}" for i in range(11)}


@pytest.mark.parametrize("name, check", ALL_CHECKS, ids=[name for name, _ in ALL_CHECKS])
def test_every_check_passes_its_own_solution(name, check, capsys):
    assert check(check.solution) is True
    assert capsys.readouterr().out.startswith("PASS - ")


def _assert_one_fail(out: str) -> None:
    assert out.startswith("FAIL - ") and out.count("FAIL - ") == 1
    assert "Traceback" not in out and "<object object at 0x" not in out


@pytest.mark.parametrize("name, check", ALL_CHECKS, ids=[name for name, _ in ALL_CHECKS])
def test_every_check_fails_a_forgotten_return_and_says_so(name, check, capsys):
    assert check(returns_none) is False
    out = capsys.readouterr().out
    _assert_one_fail(out)
    assert "did you forget `return`?" in out


@pytest.mark.parametrize("name, check", ALL_CHECKS, ids=[name for name, _ in ALL_CHECKS])
def test_every_check_fails_an_exception_and_names_it(name, check, capsys):
    assert check(raises_runtime_error) is False
    out = capsys.readouterr().out
    _assert_one_fail(out)
    assert "RuntimeError: boom from the learner's code" in out


@pytest.mark.parametrize("kind", WRONG_TYPES)
@pytest.mark.parametrize("name, check", ALL_CHECKS, ids=[name for name, _ in ALL_CHECKS])
def test_every_check_fails_a_wrong_type_without_raising(name, check, kind, capsys):
    assert check(lambda *args, **kwargs: WRONG_TYPES[kind]) is False
    _assert_one_fail(capsys.readouterr().out)


def test_passing_a_value_instead_of_a_function_is_a_clear_fail(capsys):
    assert nb00.check_conv_macs(12345) is False
    out = capsys.readouterr().out
    _assert_one_fail(out)
    assert "pass your function itself" in out
