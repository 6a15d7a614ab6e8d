"""Self-checks for the exercises at the end of each notebook.

Each ``check_*`` function takes the learner's function, runs it on a few cases against the
reference solution and prints a clear PASS or FAIL (with a hint on failure); it also returns
``True``/``False`` so tests can use it. Reference solutions are hidden until asked for:

- a student: ``reveal(check_conv_macs)`` prints the solution that one check compares with;
- an instructor, one notebook: ``from mpqlab.exercises import nb05; reveal_all(nb05)`` prints them all;
- an instructor, a whole lecture: start JupyterLab with ``MPQLAB_SOLUTIONS=1`` in the environment
  (``MPQLAB_SOLUTIONS=1 make lab``) and every check prints its solution under its verdict.
"""

from __future__ import annotations

import functools
import inspect
import math
import os

FAILED = object()  # what ``Check.run`` returns when the learner's function raised


class Check:
    """Collects the outcome of one exercise's cases and prints the verdict."""

    def __init__(self, title: str):
        self.title = title
        self.failures: list[str] = []

    def expect(self, ok: bool, message: str) -> None:
        """Record ``message`` as a failure unless ``ok``."""
        if not ok:
            self.failures.append(message)

    def close(self, to=None, value=None, message: str = "", rel: float = 1e-6, abs_: float = 1e-9) -> None:
        """Expect ``to`` and ``value`` to be equal numbers (within tolerance)."""
        if to is FAILED:
            return  # the exception is already reported
        try:
            ok = math.isclose(float(to), float(value), rel_tol=rel, abs_tol=abs_)
        except (TypeError, ValueError):
            ok = False
        self.expect(ok, f"{message}: expected {value!r}, got {to!r}")

    def run(self, fn, *args):
        """Call the learner's function, turning an exception into a failure message."""
        try:
            return fn(*args)
        except NotImplementedError:
            message = "the function still raises NotImplementedError: fill in your solution"
            if message not in self.failures:
                self.failures.append(message)
        except Exception as err:  # the learner's code may raise anything
            self.failures.append(f"calling it with {args!r} raised {type(err).__name__}: {err}")
        return FAILED

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


def with_solution(solution):
    """Decorator: attach the reference ``solution`` to a check function, for ``reveal``.

    In instructor mode (``solutions_shown()``) the check also prints the solution after its verdict.
    """
    def attach(check):
        @functools.wraps(check)
        def check_then_maybe_reveal(fn):
            passed = check(fn)
            if solutions_shown():
                print("Solution (instructor mode):")
                reveal(check_then_maybe_reveal)
            return passed
        check_then_maybe_reveal.solution = solution
        return check_then_maybe_reveal
    return attach
