"""Exercises of notebook 02 (log quantization): LogQuant by hand, the leading one, the best fsr."""

from __future__ import annotations

import torch

from mpqlab.exercises import FAILED, describe, exercise
from mpqlab.quant.log import log_quantize


def log_quant_solution(x: torch.Tensor, bits: int, fsr: int) -> torch.Tensor:
    # unsigned base-2 LogQuant: all bits for the exponent, one code for zero
    k = torch.round(torch.log2(x.clamp(min=0)))  # -inf where x <= 0
    power = 2.0 ** k.clamp(max=fsr - 1)
    return torch.where(k <= fsr - 2**bits, torch.zeros_like(x), power)


def leading_one_solution(n: int) -> int:
    # the position of the leftmost 1 is the number of binary digits minus one, exactly for any size
    return n.bit_length() - 1


def best_fsr_solution(w: torch.Tensor, bits: int, candidates) -> int:
    errors = {fsr: float(((log_quantize(w, bits, fsr) - w) ** 2).mean()) for fsr in candidates}
    return min(errors, key=errors.get)  # the first of equal errors, in the order given


@exercise("unsigned LogQuant", log_quant_solution,
          hint="round log2(x) (not x), send exponents <= fsr - 2^bits to 0, clip the rest at fsr - 1")
def check_log_quant(c, fn) -> None:
    """Exercise 1: ``fn(x, bits, fsr)`` is unsigned base-2 LogQuant (post-ReLU activations)."""
    x = torch.tensor([0.0, -1.0, 0.01, 0.1, 0.3, 0.36, 1.4, 1.42, 3.0, 5.0, 40.0])
    for bits, fsr in [(3, 2), (2, 0), (4, 6), (1, 1)]:
        want = log_quantize(x, bits, fsr, signed=False)
        got = c.run(fn, x, bits, fsr)
        if got is FAILED:  # the reason is recorded: one message is enough
            break
        c.tensor_close(got, want, f"bits={bits}, fsr={fsr}", rtol=0.0, atol=0.0)


@exercise("position of the leading one", leading_one_solution,
          hint="float log2 rounds large integers (log2(2**53 - 1) == 53.0); count binary digits instead")
def check_leading_one(c, fn) -> None:
    """Exercise 2: ``fn(n)`` is the position of the leftmost 1 of a positive int (b10110 -> 4)."""
    for n in [1, 2, 3, 22, 24, 1023, 1024, 2**40 + 1, 2**53 - 1, 2**60 + 12345]:
        want = leading_one_solution(n)
        got = c.run(fn, n)
        if got is FAILED:
            break
        c.expect(got == want, f"fn({n}) should be {want}, got {describe(got)}")


@exercise("the fsr with the smallest error", best_fsr_solution,
          hint="quantize with each candidate (mpqlab.quant.log.log_quantize), keep the smallest mean squared error")
def check_best_fsr(c, fn) -> None:
    """Exercise 3: ``fn(w, bits, candidates)`` returns the candidate fsr with the smallest MSE of signed LogQuant."""
    gen = torch.Generator().manual_seed(2)
    cases = [(torch.randn(3000, generator=gen) * 0.05, 3, range(-8, 2)),
             (torch.randn(3000, generator=gen) ** 3, 4, range(-4, 6)),
             (torch.tensor([0.9, -0.7, 0.02, 0.0]), 2, [0, 1, 2])]
    for w, bits, candidates in cases:
        want = best_fsr_solution(w, bits, candidates)
        got = c.run(fn, w, bits, candidates)
        if got is FAILED:
            break
        c.expect(got == want, f"bits={bits}, candidates {list(candidates)}: expected fsr {want}, got {describe(got)}")
