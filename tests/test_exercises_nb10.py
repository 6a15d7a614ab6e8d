"""Notebook 10 self-checks: each passes the reference solution and fails typical wrong answers."""

import torch

from mpqlab.exercises.nb10 import (
    brute_force_solution, check_brute_force, check_hutchinson, check_search_space, hutchinson_solution,
    search_space_solution,
)


def not_done(*args):
    raise NotImplementedError


def test_search_space(capsys):
    assert check_search_space(search_space_solution)
    assert not check_search_space(not_done)
    assert not check_search_space(lambda n_w, n_a, layers: (n_w + n_a) ** layers)  # adds the choices
    assert not check_search_space(lambda n_w, n_a, layers: layers * n_w * n_a)  # the paper review's slip
    assert "FAIL" in capsys.readouterr().out


def test_brute_force():
    assert check_brute_force(brute_force_solution)
    assert not check_brute_force(not_done)

    def ignores_bans(ind, options, budget, alpha=2.0):  # every bit-width allowed: can undercut the ILP
        import itertools
        names = ind.layer_names
        best = None
        for pol in itertools.product(*[[(w, a) for w in options for a in options] for _ in names]):
            if sum(ind.layer_macs[n] * w * a for n, (w, a) in zip(names, pol)) <= budget:
                c = sum(ind.act_indicators[n][a] + alpha * ind.weight_indicators[n][w] for n, (w, a) in zip(names, pol))
                best = c if best is None else min(best, c)
        return best

    assert not check_brute_force(ignores_bans)
    assert not check_brute_force(lambda ind, options, budget, alpha=2.0: 0.0)


def test_hutchinson():
    assert check_hutchinson(hutchinson_solution)
    assert not check_hutchinson(not_done)

    def gaussian_probes(matvec, n, probes, seed=0):  # unbiased too, but not exact for a diagonal H
        gen = torch.Generator().manual_seed(seed)
        return sum(float(v @ matvec(v)) for v in (torch.randn(n, generator=gen, dtype=torch.float64)
                                                  for _ in range(probes))) / probes

    assert not check_hutchinson(gaussian_probes)
    assert not check_hutchinson(lambda matvec, n, probes: float(matvec(torch.ones(n, dtype=torch.float64)).sum()))


def test_hutchinson_fails_probes_that_ignore_randomness(capsys):
    def all_ones(matvec, n, probes):  # one matvec per probe, but always the same v
        v = torch.ones(n, dtype=torch.float64)
        return sum(float(v @ matvec(v)) for _ in range(probes)) / probes

    def one_fixed_random_v(matvec, n, probes):
        v = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(5)).double() * 2 - 1
        return sum(float(v @ matvec(v)) for _ in range(probes)) / probes

    assert not check_hutchinson(all_ones)  # used to PASS
    assert "equal off-diagonal entries" in capsys.readouterr().out
    assert not check_hutchinson(one_fixed_random_v)
    assert "draw a fresh random v for every probe" in capsys.readouterr().out


def test_hutchinson_accepts_integer_probes_and_unseeded_randomness():
    def int_probes(matvec, n, probes):  # torch.randint gives int64 probes; matvec takes them
        return sum(float(matvec(v) @ v.double()) for v in (torch.randint(0, 2, (n,)) * 2 - 1
                                                           for _ in range(probes))) / probes

    assert check_hutchinson(int_probes)


def test_brute_force_fails_an_alpha_fixed_at_two():
    def alpha_fixed(ind, options, budget, alpha=2.0):
        return brute_force_solution(ind, options, budget, 2.0)  # ignores the alpha it is given

    assert not check_brute_force(alpha_fixed)  # used to PASS: every case had alpha = 2
