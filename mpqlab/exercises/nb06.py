"""Exercises of notebook 06 (learnable quantizers): LSQ's gradient scale and step gradient, PACT's forward pass."""

from __future__ import annotations

import math

import torch

from mpqlab.exercises import FAILED, exercise


def grad_scale_solution(n, q_max):
    return 1.0 / math.sqrt(n * q_max)


def lsq_step_grad_solution(v, s, q_min, q_max):
    r = v / s
    inside = r.round() - r
    return torch.where(r <= q_min, torch.full_like(r, float(q_min)),
                       torch.where(r >= q_max, torch.full_like(r, float(q_max)), inside))


def pact_forward_solution(x, alpha, bits):
    levels = 2**bits - 1
    return torch.round(x.clamp(0, alpha) * levels / alpha) * alpha / levels


@exercise("LSQ gradient scale", grad_scale_solution,
          hint="g = 1 / sqrt(N * Q_P): N values share the step, Q_P is the largest code")
def check_grad_scale(c, fn) -> None:
    """Exercise 1: ``fn(n, q_max)`` returns LSQ's gradient scale g."""
    for args in [(9, 7), (4096, 15), (1024, 1), (288, 127)]:
        want = grad_scale_solution(*args)
        got = c.run(fn, *args)
        if got is FAILED:  # the reason is recorded: one message is enough
            break
        c.close(got, want, f"fn{args}")


@exercise("LSQ step-size gradient", lsq_step_grad_solution,
          hint="inside the grid round(v/s) - v/s; below it q_min; above it q_max")
def check_lsq_step_grad(c, fn) -> None:
    """Exercise 2: ``fn(v, s, q_min, q_max)`` returns d v_hat / d s for every element of v (g = 1)."""
    cases = [(torch.tensor([-2.0, -0.26, 0.1, 0.74, 3.0]), 0.5, -2, 1),
             (torch.tensor([0.0, 0.3, 0.55, 0.9, 10.0]), 0.25, 0, 3)]
    for v, s, q_min, q_max in cases:
        want = lsq_step_grad_solution(v, s, q_min, q_max)
        got = c.run(fn, v, s, q_min, q_max)
        if got is FAILED:
            break
        c.tensor_close(got, want, f"v={v.tolist()}, s={s}", atol=1e-5)


@exercise("PACT forward pass", pact_forward_solution,
          hint="clip to [0, alpha] first, then round on 2^k - 1 steps of alpha / (2^k - 1)")
def check_pact_forward(c, fn) -> None:
    """Exercise 3: ``fn(x, alpha, bits)`` returns PACT's quantized activation."""
    cases = [(torch.tensor([-1.0, 0.4, 0.9, 3.0]), 2.0, 2), (torch.linspace(-0.5, 4.0, 10), 3.0, 3)]
    for x, alpha, bits in cases:
        want = pact_forward_solution(x, alpha, bits)
        got = c.run(fn, x, alpha, bits)
        if got is FAILED:
            break
        c.tensor_close(got, want, f"alpha={alpha}, bits={bits}", atol=1e-5)
