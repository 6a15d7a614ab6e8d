"""Exercises of notebook 05 (precision highway): the relative error, and where the quantizers go in a block."""

from __future__ import annotations

import torch

from mpqlab.exercises import FAILED, exercise


def relative_error_solution(y_hat, y):
    # Frobenius norms over the whole tensor (all images, channels and positions at once)
    return float((y_hat - y).norm() / y.norm())


def highway_block_solution(x, residual, q_branch, q_skip):
    # the branch reads the b-bit copy of x; the skip carries its own copy; the sum is taken in float
    return torch.relu(residual(q_branch(x)) + q_skip(x))


def _grid(step):
    return lambda t: torch.round(t / step) * step


def _cases():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(6, 6, generator=g) * 0.3

    def residual(t):
        return t @ w - 0.1  # a stand-in for conv-BN-ReLU-conv-BN: small next to x

    xs = [torch.randn(4, 6, generator=g).relu() * 3, torch.rand(10, 6, generator=g) * 8]
    quantizer_pairs = [(_grid(1.0), _grid(1.0)), (_grid(0.5), lambda t: t), (_grid(1.0), _grid(1 / 32))]
    return residual, xs, quantizer_pairs


@exercise("relative error of a block output", relative_error_solution,
          hint="one norm of the whole difference over one norm of the whole reference; no per-element ratios")
def check_relative_error(c, fn) -> None:
    """Exercise 1: ``fn(y_hat, y)`` returns ||y_hat - y|| / ||y|| as a float."""
    g = torch.Generator().manual_seed(6)
    for shape in [(5,), (2, 3, 4, 4), (16, 8)]:
        y = torch.randn(shape, generator=g)
        y_hat = y + 0.1 * torch.randn(shape, generator=g) + 0.05
        want = relative_error_solution(y_hat, y)
        got = c.run(fn, y_hat, y)
        if got is FAILED:  # the reason is recorded: one message is enough
            break
        c.close(got, want, f"fn(y_hat, y), shape {shape}", rel=1e-5)


HIGHWAY_HINT = "quantize x twice, once for each path; do not quantize the sum, and apply the ReLU last"


@exercise("a precision-highway block", highway_block_solution, hint=HIGHWAY_HINT)
def check_highway_block(c, fn) -> None:
    """Exercise 2: ``fn(x, residual, q_branch, q_skip)`` returns ReLU(F(Q_b(x)) + Q_s(x))."""
    residual, xs, pairs = _cases()
    for x in xs:
        for i, (q_branch, q_skip) in enumerate(pairs):
            want = highway_block_solution(x, residual, q_branch, q_skip)
            got = c.run(fn, x, residual, q_branch, q_skip)
            if got is FAILED:
                return
            c.tensor_close(got, want, f"quantizer pair {i}, x of shape {tuple(x.shape)}: "
                                      "the output differs from ReLU(F(Q_b(x)) + Q_s(x))", atol=1e-6)
