"""Self-checks for the exercises at the end of each notebook.

Each ``check_*`` function takes the learner's function, runs it on a few cases against the
reference solution and prints a clear PASS or FAIL (with a hint on failure); it also returns
``True``/``False`` so tests can use it. Three rules keep the verdict fair, for every check at once:

- the learner's function gets its own copy of every argument (``Check.run``), so an in-place answer
  such as ``x.div_(scale)`` neither fails itself nor changes the values the reference is computed from;
- anything the learner's function raises, and a ``None`` result (a forgotten ``return``), is a FAIL
  that says so (``Check.run``);
- anything raised while *judging* the answer (a list where a tensor was expected, a wrong shape) is a
  FAIL that names the exception, never a traceback (the ``exercise`` decorator).

Reference solutions are hidden until asked for:

- a student: ``reveal(check_conv_macs)`` prints the solution that one check compares with;
- an instructor, one notebook: ``from mpqlab.exercises import nb05; reveal_all(nb05)`` prints them all;
- an instructor, a whole lecture: start JupyterLab with ``MPQLAB_SOLUTIONS=1`` in the environment
  (``MPQLAB_SOLUTIONS=1 make lab``) and every check prints its solution under its verdict.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import reprlib

import torch

FAILED = object()  # what ``Check.run`` returns when the learner's function raised or returned None

NOT_IMPLEMENTED = "the function still raises NotImplementedError: fill in your solution"
RETURNED_NONE = "your function returned None: did you forget `return`?"


def learner_copy(value):
    """A copy of one argument that the learner's function may change in place without harm.

    Tensors are cloned, containers, arrays and dataclasses deep-copied; functions (and anything that
    cannot be copied) are passed as they are.
    """
    if isinstance(value, torch.Tensor):
        return value.clone()  # deepcopy refuses non-leaf tensors; clone works for every tensor
    try:
        return copy.deepcopy(value)
    except Exception:  # e.g. a torch.Generator: nothing a learner would modify
        return value


def describe(value) -> str:
    """A short description of an argument for a failure message: small values in full, big tensors by shape."""
    if isinstance(value, torch.Tensor) and value.numel() > 8:
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, torch.Tensor):
        return f"tensor({value.tolist()})"
    if callable(value):
        return getattr(value, "__name__", "a function")
    return reprlib.repr(value)


def _first_values(t: torch.Tensor, count: int = 12) -> str:
    """The first ``count`` values of a tensor, rounded to 6 decimals, for a failure message."""
    values = [round(v, 6) for v in t.flatten()[:count].tolist()]
    return str(values)[:-1] + (", ...]" if t.numel() > count else "]")


class Check:
    """Collects the outcome of one exercise's cases and prints the verdict."""

    def __init__(self, title: str):
        self.title = title
        self.failures: list[str] = []

    def expect(self, ok: bool, message: str) -> None:
        """Record ``message`` as a failure unless ``ok``."""
        if not ok:
            self.failures.append(message)

    def fail_once(self, message: str) -> None:
        """Record ``message`` unless it is already recorded (the same mistake in every case is said once)."""
        if message not in self.failures:
            self.failures.append(message)

    def close(self, to=None, value=None, message: str = "", rel: float = 1e-6, abs_: float = 1e-9) -> None:
        """Expect ``to`` and ``value`` to be equal numbers (within tolerance)."""
        if to is FAILED:
            return  # the exception is already reported
        try:
            ok = math.isclose(float(to), float(value), rel_tol=rel, abs_tol=abs_)
        except Exception:  # a list, a string, a many-element tensor: not a number
            ok = False
        self.expect(ok, f"{message}: expected {value!r}, got {describe(to)}")

    def tensor_close(self, got, want: torch.Tensor, label: str, rtol: float = 1e-5, atol: float = 1e-5) -> None:
        """Expect ``got`` to be a tensor of ``want``'s shape whose values are close to ``want``'s."""
        if got is FAILED:
            return  # the exception is already reported
        if not isinstance(got, torch.Tensor):
            self.expect(False, f"{label}: expected a tensor, got {type(got).__name__} {describe(got)}")
        elif got.shape != want.shape:
            self.expect(False, f"{label}: expected shape {tuple(want.shape)}, got shape {tuple(got.shape)}")
        else:
            got = got.to(want.dtype)
            ok = torch.allclose(got, want, rtol=rtol, atol=atol)
            self.expect(ok, f"{label}: expected {_first_values(want)}, got {_first_values(got)}")

    def run(self, fn, *args, may_return_none: bool = False):
        """Call the learner's function on copies of ``args``; return its result, or ``FAILED``.

        ``FAILED`` (with the reason recorded) when it raised anything, or when it returned None and
        ``may_return_none`` is False (None is a right answer only for exercises that say so).
        """
        try:
            result = fn(*[learner_copy(a) for a in args])
        except NotImplementedError:
            self.fail_once(NOT_IMPLEMENTED)
            return FAILED
        except Exception as err:  # the learner's code may raise anything
            shown = ", ".join(describe(a) for a in args)
            self.failures.append(f"calling it with ({shown}) raised {type(err).__name__}: {err}")
            return FAILED
        if result is None and not may_return_none:
            self.fail_once(RETURNED_NONE)
            return FAILED
        return result

    def verdict(self, hint: str = "") -> bool:
        if self.failures:
            print(f"FAIL - {self.title}")
            for f in self.failures[:3]:
                print(f"  - {f}")
            if hint:
                print(f"  Hint: {hint}")
            return False
        print(f"PASS - {self.title}")
        return True


SOLUTIONS_ENV = "MPQLAB_SOLUTIONS"  # "1" turns on instructor mode: every check prints its solution


def solutions_shown() -> bool:
    """Instructor mode: True when the environment variable ``MPQLAB_SOLUTIONS`` is "1" (read at each call)."""
    return os.environ.get(SOLUTIONS_ENV, "") == "1"


def reveal(check_function) -> None:
    """Print the reference solution behind ``check_function`` (for instructors, or after trying)."""
    solution = getattr(check_function, "solution", None)
    if solution is None:
        print(f"{check_function.__name__} has no stored solution")
        return
    print(inspect.getsource(solution))


def reveal_all(exercises_module) -> list[str]:
    """Print the reference solution of every check in one notebook's exercises module, in order.

    ``from mpqlab.exercises import nb05; reveal_all(nb05)``. Returns the names of the checks shown.
    """
    names = []
    for name, obj in vars(exercises_module).items():  # definition order
        defined_here = getattr(obj, "__module__", None) == exercises_module.__name__
        if name.startswith("check_") and defined_here and getattr(obj, "solution", None) is not None:
            print(f"# --- {name} ---")
            reveal(obj)
            names.append(name)
    if not names:
        print(f"{exercises_module.__name__} has no checks with stored solutions")
    return names


def exercise(title: str, solution, hint: str = ""):
    """Decorator: turn a check body ``body(c, fn)`` into the learner's ``check_*(fn) -> bool``.

    The body judges ``fn`` through ``c``, a ``Check`` titled ``title``; the decorator prints the
    verdict (with ``hint`` under a FAIL) and returns it. Whatever the body raises while judging, for
    instance because ``fn`` returned a string where a tensor was expected, becomes a FAIL naming the
    exception. ``solution`` is attached for ``reveal``; in instructor mode (``solutions_shown()``) it is
    printed under the verdict.
    """
    def make_check(body):
        def check(fn) -> bool:
            c = Check(title)
            try:
                if not callable(fn):  # e.g. check_x(my_function(...)) instead of check_x(my_function)
                    c.failures.append(f"pass your function itself, not a value: got {describe(fn)}")
                else:
                    body(c, fn)
            except Exception as err:  # judging a wrong answer must never end in a traceback
                c.failures.append(f"checking your answer raised {type(err).__name__}: {err} "
                                  "(does your function return the type and shape the exercise asks for?)")
            passed = c.verdict(hint)
            if solutions_shown():
                print("Solution (instructor mode):")
                reveal(check)
            return passed

        check.__name__ = check.__qualname__ = body.__name__
        check.__doc__, check.__module__ = body.__doc__, body.__module__
        check.solution = solution
        return check
    return make_check
