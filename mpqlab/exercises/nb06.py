"""Exercises of notebook 06 (learnable quantizers): LSQ's gradient scale and step gradient, PACT's forward pass."""

from __future__ import annotations

import math

import torch

from mpqlab.exercises import FAILED, Check, with_solution


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


@with_solution(grad_scale_solution)
def check_grad_scale(fn) -> bool:
    """Exercise 1: ``fn(n, q_max)`` returns LSQ's gradient scale g."""
    c = Check("LSQ gradient scale")
    for args in [(9, 7), (4096, 15), (1024, 1), (288, 127)]:
        c.close(c.run(fn, *args), grad_scale_solution(*args), f"fn{args}")
    return c.verdict("g = 1 / sqrt(N * Q_P): N values share the step, Q_P is the largest code")


def _close_tensors(c: Check, got, want, label: str) -> None:
    ok = isinstance(got, torch.Tensor) and got.shape == want.shape and torch.allclose(got.float(), want, atol=1e-5)
    c.expect(ok, f"{label}: expected {want.tolist()}, got {got.tolist() if isinstance(got, torch.Tensor) else got!r}")


@with_solution(lsq_step_grad_solution)
def check_lsq_step_grad(fn) -> bool:
    """Exercise 2: ``fn(v, s, q_min, q_max)`` returns d v_hat / d s for every element of v (g = 1)."""
    c = Check("LSQ step-size gradient")
    cases = [(torch.tensor([-2.0, -0.26, 0.1, 0.74, 3.0]), 0.5, -2, 1),
             (torch.tensor([0.0, 0.3, 0.55, 0.9, 10.0]), 0.25, 0, 3)]
    for v, s, q_min, q_max in cases:
        got = c.run(fn, v, s, q_min, q_max)
        if got is not FAILED:
            _close_tensors(c, got, lsq_step_grad_solution(v, s, q_min, q_max), f"v={v.tolist()}, s={s}")
    return c.verdict("inside the grid round(v/s) - v/s; below it q_min; above it q_max")


@with_solution(pact_forward_solution)
def check_pact_forward(fn) -> bool:
    """Exercise 3: ``fn(x, alpha, bits)`` returns PACT's quantized activation."""
    c = Check("PACT forward pass")
    cases = [(torch.tensor([-1.0, 0.4, 0.9, 3.0]), 2.0, 2), (torch.linspace(-0.5, 4.0, 10), 3.0, 3)]
    for x, alpha, bits in cases:
        got = c.run(fn, x, alpha, bits)
        if got is not FAILED:
            _close_tensors(c, got, pact_forward_solution(x, alpha, bits), f"alpha={alpha}, bits={bits}")
    return c.verdict("clip to [0, alpha] first, then round on 2^k - 1 steps of alpha / (2^k - 1)")
