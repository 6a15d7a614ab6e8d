"""Exercises of notebook 07 (PROFIT): folding the h-swish shift into a bias, the Gaussian KL behind AIWQ,
and picking the layers to freeze."""

from __future__ import annotations

import torch

from mpqlab.exercises import FAILED, Check, with_solution


def fold_bias_solution(weight, bias, shift):
    return bias - shift * weight.sum(dim=(1, 2, 3))


def gaussian_kl_solution(mu_p, var_p, mu_q, var_q):
    return 0.5 * (torch.log(var_q / var_p) + (var_p + (mu_p - mu_q) ** 2) / var_q - 1.0)


def pick_frozen_solution(scores, frozen, fraction):
    target = round(fraction * len(scores)) - len(frozen)
    ranked = sorted((n for n in scores if n not in frozen), key=lambda n: -scores[n])
    return ranked[:max(target, 0)]


def _close_tensors(c: Check, got, want, label: str) -> None:
    ok = isinstance(got, torch.Tensor) and got.shape == want.shape and torch.allclose(got.float(), want, atol=1e-5)
    shown = got.tolist() if isinstance(got, torch.Tensor) else got
    c.expect(ok, f"{label}: expected {[round(v, 4) for v in want.tolist()]}, got {shown!r}")


@with_solution(fold_bias_solution)
def check_fold_bias(fn) -> bool:
    """Exercise 1: ``fn(weight, bias, shift)`` returns the bias of the conv that reads ``x + shift``."""
    c = Check("folding the shift into the bias")
    g = torch.Generator().manual_seed(7)
    cases = [(torch.randn(3, 2, 1, 1, generator=g), torch.zeros(3), 0.375),
             (torch.randn(4, 1, 3, 3, generator=g), torch.randn(4, generator=g), 0.375),
             (torch.randn(2, 5, 3, 3, generator=g), torch.randn(2, generator=g), 1.0)]
    for weight, bias, shift in cases:
        got = c.run(fn, weight, bias, shift)
        if got is not FAILED:
            _close_tensors(c, got, fold_bias_solution(weight, bias, shift), f"weight {tuple(weight.shape)}, shift {shift}")
    return c.verdict("W*(x + d) = W*x + d * (sum of each filter's weights): subtract that from the bias")


@with_solution(gaussian_kl_solution)
def check_gaussian_kl(fn) -> bool:
    """Exercise 2: ``fn(mu_p, var_p, mu_q, var_q)`` returns KL(N_p || N_q) element-wise."""
    c = Check("KL divergence of two Gaussians")
    cases = [(torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([1.0])),
             (torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.5]), torch.tensor([1.0, 1.0]), torch.tensor([1.0, 2.0])),
             (torch.tensor([2.0, -1.0, 0.3]), torch.tensor([0.2, 3.0, 1.0]), torch.tensor([1.5, 0.0, 0.3]),
              torch.tensor([0.4, 1.0, 0.25]))]
    for args in cases:
        got = c.run(fn, *args)
        if got is not FAILED:
            _close_tensors(c, got, gaussian_kl_solution(*args), f"mu_p={args[0].tolist()}")
    return c.verdict("1/2 [log(var_q/var_p) + (var_p + (mu_p - mu_q)^2) / var_q - 1]; note: variances, not stds")


@with_solution(pick_frozen_solution)
def check_pick_frozen(fn) -> bool:
    """Exercise 3: ``fn(scores, frozen, fraction)`` lists the layers to freeze next, largest AIWQ first."""
    c = Check("choosing the layers to freeze")
    scores = {"dw1": 0.9, "pw1": 0.1, "dw2": 0.7, "pw2": 0.2, "ex3": 0.3, "dw3": 0.8}
    cases = [(scores, [], 1 / 3), (scores, ["dw1", "dw3"], 2 / 3), (scores, ["dw1", "dw3"], 1 / 3),
             (scores, [], 1.0)]
    for args in cases:
        got = c.run(fn, *args)
        if got is not FAILED:
            want = pick_frozen_solution(*args)
            c.expect(list(got) == want, f"frozen={args[1]}, fraction={args[2]:.2f}: expected {want}, got {got!r}")
    return c.verdict("freeze round(fraction * len(scores)) layers in total: rank the unfrozen ones by score, "
                     "take as many as are missing")
