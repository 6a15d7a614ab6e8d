"""Exercises of notebook 03 (weighted-entropy quantization): representatives, S, and the best boundary."""

from __future__ import annotations

import math

import torch

from mpqlab.exercises import FAILED, describe, exercise
from mpqlab.quant.weighted_entropy import weighted_entropy, weighted_entropy_levels


def _clusters(w: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    return torch.bucketize(w.abs(), thresholds, right=True)  # |w| >= thresholds[k] -> cluster k+1 or higher


def representatives_solution(w: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    # sqrt(I_k): the root of the mean importance w^2 of each magnitude cluster
    k = _clusters(w, thresholds)
    return torch.stack([w[k == j].pow(2).mean().sqrt() for j in range(len(thresholds) + 1)])


def weighted_entropy_solution(w: torch.Tensor, thresholds: torch.Tensor) -> float:
    k, n, s = _clusters(w, thresholds), w.numel(), 0.0
    for j in range(len(thresholds) + 1):
        members = w[k == j]
        if members.numel():
            p, i = members.numel() / n, float(members.pow(2).mean())
            s -= i * p * math.log(p)
    return s


def best_threshold_solution(w: torch.Tensor) -> float:
    mags = w.abs().sort().values
    best_s, best_t = -math.inf, 0.0
    for j in range(1, len(mags)):  # cluster 0 = the j smallest magnitudes
        t = float(mags[j - 1] + mags[j]) / 2
        s = weighted_entropy_solution(w, torch.tensor([t], dtype=w.dtype))
        if s > best_s:
            best_s, best_t = s, t
    return best_t


def _cases():
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(400, generator=gen, dtype=torch.float64) * 0.1
    return [(w, torch.tensor([0.05, 0.12, 0.2], dtype=torch.float64)),
            (w ** 3, torch.tensor([1e-4], dtype=torch.float64)),
            (torch.tensor([0.1, -0.2, 0.3, -0.4, 0.5], dtype=torch.float64), torch.tensor([0.25], dtype=torch.float64))]


@exercise("cluster representatives sqrt(I_k)", representatives_solution,
          hint="cluster by |w| (torch.bucketize(w.abs(), thresholds, right=True)); I_k is the mean of w^2")
def check_representatives(c, fn) -> None:
    """Exercise 1: ``fn(w, thresholds)`` returns each magnitude cluster's representative sqrt(I_k)."""
    for w, thresholds in _cases():
        want = representatives_solution(w, thresholds)
        got = c.run(fn, w, thresholds)
        if got is FAILED:  # the reason is recorded: one message is enough
            break
        c.tensor_close(got, want, f"thresholds {thresholds.tolist()}", atol=1e-8)


@exercise("weighted entropy S", weighted_entropy_solution,
          hint="P_k is the share of weights in cluster k, I_k their mean w^2; natural log; skip empty clusters")
def check_weighted_entropy(c, fn) -> None:
    """Exercise 2: ``fn(w, thresholds)`` returns S = -sum_k I_k P_k log P_k of the magnitude clusters."""
    for w, thresholds in _cases():
        want = weighted_entropy(w ** 2, _clusters(w, thresholds))
        got = c.run(fn, w, thresholds)
        if got is FAILED:
            break
        c.close(got, want, f"thresholds {thresholds.tolist()}", rel=1e-9)


@exercise("the best 2-bit boundary, by brute force", best_threshold_solution,
          hint="try every split of the sorted |w| between two neighbours and keep the largest S")
def check_best_threshold(c, fn) -> None:
    """Exercise 3: ``fn(w)`` returns the one magnitude threshold (2 bits: 2 clusters) that maximises S."""
    gen = torch.Generator().manual_seed(4)
    for w in [torch.randn(60, generator=gen, dtype=torch.float64), torch.rand(50, generator=gen, dtype=torch.float64) ** 2]:
        reference = weighted_entropy_levels(w, 2)  # the package's coordinate ascent; exact for one boundary
        got = c.run(fn, w)
        if got is FAILED:
            break
        try:
            threshold = float(got)
        except (TypeError, ValueError):
            c.expect(False, f"fn(w) must return one number, the threshold; got {describe(got)}")
            continue
        same = torch.equal(_clusters(w, torch.tensor([threshold], dtype=w.dtype)), _clusters(w, reference.thresholds))
        c.expect(same, f"your threshold {threshold:.4f} splits the weights differently from the optimum "
                       f"{float(reference.thresholds[0]):.4f}")
