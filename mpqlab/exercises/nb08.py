"""Exercises of notebook 08 (binarization): XNOR-popcount dot products and XNOR-Net's weight scale."""

from __future__ import annotations

import torch

from mpqlab.exercises import FAILED, exercise


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


@exercise("XNOR-popcount dot product", xnor_dot_solution,
          hint="count where the bits agree (XNOR = 1), then 2 * matches - n")
def check_xnor_dot(c, fn) -> None:
    """Exercise 1: ``fn(a_bits, w_bits)`` returns the dot product of the +-1 vectors the bits encode."""
    g = torch.Generator().manual_seed(1)
    for n in (1, 8, 27, 100):
        a, w = torch.randint(0, 2, (n,), generator=g), torch.randint(0, 2, (n,), generator=g)
        want = float(_pm1(a) @ _pm1(w))
        got = c.run(fn, a, w)
        if got is FAILED:  # the reason is recorded: one message is enough
            break
        c.close(got, want, f"n={n}")


@exercise("XNOR-Net weight scale", weight_scale_solution,
          hint="alpha = mean of |W| over everything but the output-channel axis (axis 0)")
def check_weight_scale(c, fn) -> None:
    """Exercise 2: ``fn(w)`` returns XNOR-Net's scale per output channel, shape (C_out,)."""
    g = torch.Generator().manual_seed(2)
    for shape in [(4, 3, 3, 3), (6, 1, 3, 3), (5, 7)]:
        w = torch.randn(shape, generator=g)
        want = weight_scale_solution(w)
        got = c.run(fn, w)
        if got is FAILED:
            break
        c.tensor_close(got, want, f"shape {shape}", atol=1e-6)


@exercise("AND-popcount dot product ({0, 1} activations)", and_popcount_dot_solution,
          hint="only inputs with a = 1 count: 2 * popcount(a AND w) - popcount(a)")
def check_and_popcount_dot(c, fn) -> None:
    """Exercise 3: ``fn(a_bits, w_bits)``: activations in {0, 1}, weights +-1 encoded as bits; their dot product."""
    g = torch.Generator().manual_seed(3)
    for n in (1, 9, 64, 90):
        a, w = torch.randint(0, 2, (n,), generator=g), torch.randint(0, 2, (n,), generator=g)
        want = float(a.float() @ _pm1(w))
        got = c.run(fn, a, w)
        if got is FAILED:
            break
        c.close(got, want, f"n={n}")
