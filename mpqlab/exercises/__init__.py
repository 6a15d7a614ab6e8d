"""Self-checks for the exercises at the end of each notebook.

Each ``check_*`` function takes the learner's function, runs it on a few cases against the
reference solution and prints a clear PASS or FAIL (with a hint on failure); it also returns
``True``/``False`` so tests can use it. Reference solutions are hidden until asked for:
``reveal(check_conv_macs)`` prints the solution that the check compares with (instructor mode).
"""

from __future__ import annotations

import inspect
import math

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


def reveal(check_function) -> None:
    """Print the reference solution behind ``check_function`` (for instructors, or after trying)."""
    solution = getattr(check_function, "solution", None)
    if solution is None:
        print(f"{check_function.__name__} has no stored solution")
        return
    print(inspect.getsource(solution))


def with_solution(solution):
    """Decorator: attach the reference ``solution`` to a check function, for ``reveal``."""
    def attach(check):
        check.solution = solution
        return check
    return attach
