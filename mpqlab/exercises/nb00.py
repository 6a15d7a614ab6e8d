"""Exercises of notebook 00 (the tour): counting MACs and BitOps by hand."""

from __future__ import annotations

from mpqlab.exercises import Check, with_solution


def conv_macs_solution(h_out, w_out, c_in, c_out, k, groups=1):
    # every output value needs (c_in / groups) * k * k multiply-adds
    return h_out * w_out * c_out * (c_in // groups) * k * k


def bitops_solution(macs, w_bits, a_bits):
    return sum(m * w * a for m, w, a in zip(macs, w_bits, a_bits))


@with_solution(conv_macs_solution)
def check_conv_macs(fn) -> bool:
    """Exercise 1: ``fn(h_out, w_out, c_in, c_out, k, groups=1)`` returns a conv layer's MACs."""
    c = Check("conv MACs")
    for args in [(112, 112, 3, 32, 3, 1), (56, 56, 64, 64, 3, 64), (7, 7, 1024, 1024, 1, 1)]:
        c.close(c.run(fn, *args), conv_macs_solution(*args), f"fn{args}")
    return c.verdict("a depthwise conv (groups = c_in) sees only one input channel per output channel")


@with_solution(bitops_solution)
def check_bitops(fn) -> bool:
    """Exercise 2: ``fn(macs, w_bits, a_bits)`` returns the BitOps of a policy (lists per layer)."""
    c = Check("BitOps of a policy")
    cases = [([100], [8], [8]), ([10, 20, 30], [2, 4, 8], [8, 4, 2]), ([5, 5], [32, 1], [1, 32])]
    for args in cases:
        c.close(c.run(fn, *args), bitops_solution(*args), f"fn{args}")
    return c.verdict("BitOps multiply each layer's MACs by both of its bit-widths, then sum")
