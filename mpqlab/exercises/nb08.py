"""Exercises of notebook 08 (binarization): XNOR-popcount dot products and XNOR-Net's weight scale."""

from __future__ import annotations

import torch

from mpqlab.exercises import FAILED, Check, with_solution


def xnor_dot_solution(a_bits, w_bits):
    # matching bits are (+1)(+1) or (-1)(-1) = +1, the others -1: matches - (n - matches)
    n = a_bits.shape[-1]
    return 2 * int((a_bits == w_bits).sum()) - n


def weight_scale_solution(w):
    return w.abs().flatten(1).mean(1)


def and_popcount_dot_solution(a_bits, w_bits):
    # a in {0, 1}, w in {-1, +1} as bits: sum over a_i = 1 of w_i = (#w=+1) - (#w=-1) among them
    on = int(a_bits.sum())
    return 2 * int((a_bits & w_bits).sum()) - on


def _pm1(bits):
    return 2 * bits.float() - 1  # {0, 1} -> {-1, +1}


@with_solution(xnor_dot_solution)
def check_xnor_dot(fn) -> bool:
    """Exercise 1: ``fn(a_bits, w_bits)`` returns the dot product of the +-1 vectors the bits encode."""
    c = Check("XNOR-popcount dot product")
    g = torch.Generator().manual_seed(1)
    for n in (1, 8, 27, 100):
        a, w = torch.randint(0, 2, (n,), generator=g), torch.randint(0, 2, (n,), generator=g)
        c.close(c.run(fn, a, w), float(_pm1(a) @ _pm1(w)), f"n={n}")
    return c.verdict("count where the bits agree (XNOR = 1), then 2 * matches - n")


@with_solution(weight_scale_solution)
def check_weight_scale(fn) -> bool:
    """Exercise 2: ``fn(w)`` returns XNOR-Net's scale per output channel, shape (C_out,)."""
    c = Check("XNOR-Net weight scale")
    g = torch.Generator().manual_seed(2)
    for shape in [(4, 3, 3, 3), (6, 1, 3, 3), (5, 7)]:
        w = torch.randn(shape, generator=g)
        got = c.run(fn, w)
        if got is not FAILED:
            want = weight_scale_solution(w)
            ok = isinstance(got, torch.Tensor) and got.shape == want.shape and torch.allclose(got, want, atol=1e-6)
            c.expect(ok, f"shape {shape}: expected {want.tolist()}, got {got}")
    return c.verdict("alpha = mean of |W| over everything but the output-channel axis (axis 0)")


@with_solution(and_popcount_dot_solution)
def check_and_popcount_dot(fn) -> bool:
    """Exercise 3: ``fn(a_bits, w_bits)``: activations in {0, 1}, weights +-1 encoded as bits; their dot product."""
    c = Check("AND-popcount dot product ({0, 1} activations)")
    g = torch.Generator().manual_seed(3)
    for n in (1, 9, 64, 90):
        a, w = torch.randint(0, 2, (n,), generator=g), torch.randint(0, 2, (n,), generator=g)
        c.close(c.run(fn, a, w), float(a.float() @ _pm1(w)), f"n={n}")
    return c.verdict("only inputs with a = 1 count: 2 * popcount(a AND w) - popcount(a)")
