"""Exercises of notebook 10 (the LIMPQ search): the size of the search space, a brute-force search, Hutchinson."""

from __future__ import annotations

import itertools

import torch

from mpqlab.exercises import FAILED, describe, exercise
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


@exercise("size of the search space", search_space_solution,
          hint="each layer chooses a (w_bits, a_bits) pair; the choices multiply across layers")
def check_search_space(c, fn) -> None:
    """Exercise 1: ``fn(n_w, n_a, layers)`` is the number of mixed-precision policies."""
    for args in [(5, 5, 1), (5, 5, 26), (2, 3, 4), (4, 4, 50)]:
        want = search_space_solution(*args)
        got = c.run(fn, *args)
        if got is FAILED:  # the reason is recorded: one message is enough
            break
        c.expect(got == want, f"fn{args}: expected {want}, got {describe(got)}")


@exercise("brute-force search equals the ILP", brute_force_solution,
          hint="itertools.product over each layer's allowed pairs; skip policies over budget; remember the banned "
               "bit-widths (allowed_bits); weigh the weight indicators by the alpha you are given")
def check_brute_force(c, fn) -> None:
    """Exercise 2: ``fn(indicators, bit_options, bitops_budget, alpha)`` is the optimal objective, by enumeration."""
    options = [6, 5, 4, 3, 2]
    # seeds 2 and 9 have banned bit-widths that matter; alpha != 2 catches an alpha fixed at LIMPQ's default
    for seed, bits, alpha in [(0, 3, 2.0), (2, 4, 2.0), (9, 3, 2.0), (0, 4, 0.5), (9, 3, 5.0)]:
        ind = synthetic_indicators(3, options, seed=seed)
        budget = uniform_budget(ind, bits, bits)
        want = solve_policy(ind, options, budget, alpha=alpha).objective
        got = c.run(fn, ind, options, budget, alpha)
        if got is FAILED:
            break
        c.close(got, want, f"seed {seed}, budget W{bits}A{bits}, alpha={alpha}", rel=1e-9)


def _hutchinson_matrices():
    """(label, H, probes): symmetric 40 x 40 matrices whose traces a Rademacher average finds within 5%."""
    gen = torch.Generator().manual_seed(1)
    n = 40
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    diag = torch.diag(torch.linspace(1, 3, n, dtype=torch.float64))
    off_diagonal = torch.ones(n, n, dtype=torch.float64) - torch.eye(n, dtype=torch.float64)
    return [("a dense H", a @ a.T / n + diag, 2000),
            # 1^T H 1 = Tr(H) + 0.05 * 40 * 39: an all-ones (or any fixed) probe misses the trace by about 100%
            ("an H with equal off-diagonal entries", diag + 0.05 * off_diagonal, 1000),
            ("a diagonal H (exact for any +-1 probe)", diag, 3)]


@exercise("Hutchinson trace estimator", hutchinson_solution,
          hint="draw a new v for every probe, entries +1 or -1 with probability 1/2 each; average v @ matvec(v)")
def check_hutchinson(c, fn) -> None:
    """Exercise 3: ``fn(matvec, n, probes)`` estimates Tr(H) from products H v only."""
    for label, h, probes in _hutchinson_matrices():
        want = float(torch.trace(h))
        seen = []  # every probe the learner's function multiplies

        def matvec(v, h=h, seen=seen):
            v = torch.as_tensor(v).to(torch.float64)  # accept int or float32 probes
            seen.append(v.detach().clone())
            return h @ v

        got = c.run(fn, matvec, h.shape[0], probes)
        if got is FAILED:  # the reason is recorded: one message is enough
            return
        exact = probes <= 3
        c.close(got, want, f"{label}, {probes} probes", rel=1e-9 if exact else 0.05)
        c.expect(len(seen) == probes, f"{label}: expected exactly one matvec per probe ({probes}), got {len(seen)}")
        if not seen:
            continue
        rademacher = all(bool((v.abs() == 1).all()) for v in seen)
        c.expect(rademacher, f"{label}: every probe entry must be +1 or -1 (Rademacher); one probe began "
                             f"{[round(x, 3) for x in seen[0].flatten()[:5].tolist()]}")
        distinct = len({tuple(v.flatten().tolist()) for v in seen})
        c.expect(exact or distinct >= 0.9 * len(seen),
                 f"{label}: only {distinct} different probes among {len(seen)}: draw a fresh random v for every "
                 "probe (a fixed v, such as all ones, estimates 1^T H 1 or v^T H v, not the trace)")
