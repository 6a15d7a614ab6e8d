"""Exercises of notebook 00 (the tour): counting MACs and BitOps by hand."""

from __future__ import annotations

from mpqlab.exercises import FAILED, exercise


def conv_macs_solution(h_out, w_out, c_in, c_out, k, groups=1):
    # every output value needs (c_in / groups) * k * k multiply-adds
    return h_out * w_out * c_out * (c_in // groups) * k * k


def bitops_solution(macs, w_bits, a_bits):
    return sum(m * w * a for m, w, a in zip(macs, w_bits, a_bits))


@exercise("conv MACs", conv_macs_solution,
          hint="a depthwise conv (groups = c_in) sees only one input channel per output channel")
def check_conv_macs(c, fn) -> None:
    """Exercise 1: ``fn(h_out, w_out, c_in, c_out, k, groups=1)`` returns a conv layer's MACs."""
    for args in [(112, 112, 3, 32, 3, 1), (56, 56, 64, 64, 3, 64), (7, 7, 1024, 1024, 1, 1)]:
        want = conv_macs_solution(*args)
        got = c.run(fn, *args)
        if got is FAILED:  # the reason is recorded: one message is enough
            break
        c.close(got, want, f"fn{args}")


@exercise("BitOps of a policy", bitops_solution,
          hint="BitOps multiply each layer's MACs by both of its bit-widths, then sum")
def check_bitops(c, fn) -> None:
    """Exercise 2: ``fn(macs, w_bits, a_bits)`` returns the BitOps of a policy (lists per layer)."""
    cases = [([100], [8], [8]), ([10, 20, 30], [2, 4, 8], [8, 4, 2]), ([5, 5], [32, 1], [1, 32])]
    for args in cases:
        want = bitops_solution(*args)
        got = c.run(fn, *args)
        if got is FAILED:
            break
        c.close(got, want, f"fn{args}")
