"""Exercises of notebook 10 (the LIMPQ search): the size of the search space, a brute-force search, Hutchinson."""

from __future__ import annotations

import itertools

import torch

from mpqlab.exercises import FAILED, Check, with_solution
from mpqlab.limpq.indicators import synthetic_indicators
from mpqlab.limpq.search import allowed_bits, solve_policy, uniform_budget


def search_space_solution(n_w: int, n_a: int, layers: int) -> int:
    # every layer picks one of n_w weight and one of n_a activation bit-widths, independently
    return (n_w * n_a) ** layers


def brute_force_solution(indicators, bit_options, bitops_budget, alpha=2.0):
    names = indicators.layer_names
    choices = [[(w, a) for w in allowed_bits(indicators.weight_indicators[n], bit_options)
                for a in allowed_bits(indicators.act_indicators[n], bit_options)] for n in names]
    best = None
    for policy in itertools.product(*choices):
        ops = sum(indicators.layer_macs[n] * w * a for n, (w, a) in zip(names, policy))
        if ops > bitops_budget:
            continue
        cost = sum(indicators.act_indicators[n][a] + alpha * indicators.weight_indicators[n][w]
                   for n, (w, a) in zip(names, policy))
        if best is None or cost < best:
            best = cost
    return best


def hutchinson_solution(matvec, n: int, probes: int, seed: int = 0) -> float:
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(probes):
        v = torch.randint(0, 2, (n,), generator=gen).double() * 2 - 1  # Rademacher: +-1
        total += float(v @ matvec(v))
    return total / probes


@with_solution(search_space_solution)
def check_search_space(fn) -> bool:
    """Exercise 1: ``fn(n_w, n_a, layers)`` is the number of mixed-precision policies."""
    c = Check("size of the search space")
    for args in [(5, 5, 1), (5, 5, 26), (2, 3, 4), (4, 4, 50)]:
        value = c.run(fn, *args)
        if value is FAILED:  # the exception is already reported
            continue
        c.expect(value == search_space_solution(*args), f"fn{args}: expected {search_space_solution(*args)}, "
                                                          f"got {value!r}")
    return c.verdict("each layer chooses a (w_bits, a_bits) pair; the choices multiply across layers")


@with_solution(brute_force_solution)
def check_brute_force(fn) -> bool:
    """Exercise 2: ``fn(indicators, bit_options, bitops_budget, alpha)`` is the optimal objective, by enumeration."""
    c = Check("brute-force search equals the ILP")
    options = [6, 5, 4, 3, 2]
    for seed, bits in [(0, 3), (2, 4), (9, 3)]:  # the last two have banned bit-widths that matter
        ind = synthetic_indicators(3, options, seed=seed)
        budget = uniform_budget(ind, bits, bits)
        expected = solve_policy(ind, options, budget).objective
        c.close(c.run(fn, ind, options, budget, 2.0), expected, f"seed {seed}, budget W{bits}A{bits}", rel=1e-9)
    return c.verdict("itertools.product over each layer's allowed pairs; skip policies over budget; "
                     "remember the banned bit-widths (allowed_bits)")


@with_solution(hutchinson_solution)
def check_hutchinson(fn) -> bool:
    """Exercise 3: ``fn(matvec, n, probes)`` estimates Tr(H) from products H v only."""
    c = Check("Hutchinson trace estimator")
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(40, 40, generator=gen, dtype=torch.float64)
    h = a @ a.T / 40 + torch.diag(torch.linspace(1, 3, 40, dtype=torch.float64))  # symmetric, diagonal-heavy
    calls = []

    def matvec(v):
        calls.append(1)
        return h @ v

    estimate = c.run(fn, matvec, 40, 2000)
    true = float(torch.trace(h))
    c.close(estimate, true, "estimate with 2000 probes", rel=0.05)
    c.expect(len(calls) == 2000, f"expected exactly one matvec per probe (2000), got {len(calls)}")
    diag = torch.diag(torch.diagonal(h))
    c.close(c.run(fn, lambda v: diag @ v, 40, 3), float(torch.trace(diag)), "a diagonal H (exact for any probe)",
            rel=1e-9)
    return c.verdict("v has entries +1 or -1 with probability 1/2 each; average v @ matvec(v)")
