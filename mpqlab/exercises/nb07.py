"""Exercises of notebook 07 (PROFIT): folding the h-swish shift into a bias, the Gaussian KL behind AIWQ,
and picking the layers to freeze."""

from __future__ import annotations

import torch

from mpqlab.exercises import FAILED, describe, exercise


def fold_bias_solution(weight, bias, shift):
    return bias - shift * weight.sum(dim=(1, 2, 3))


def gaussian_kl_solution(mu_p, var_p, mu_q, var_q):
    return 0.5 * (torch.log(var_q / var_p) + (var_p + (mu_p - mu_q) ** 2) / var_q - 1.0)


def pick_frozen_solution(scores, frozen, fraction):
    target = round(fraction * len(scores)) - len(frozen)
    ranked = sorted((n for n in scores if n not in frozen), key=lambda n: -scores[n])
    return ranked[:max(target, 0)]


@exercise("folding the shift into the bias", fold_bias_solution,
          hint="W*(x + d) = W*x + d * (sum of each filter's weights): subtract that from the bias")
def check_fold_bias(c, fn) -> None:
    """Exercise 1: ``fn(weight, bias, shift)`` returns the bias of the conv that reads ``x + shift``."""
    g = torch.Generator().manual_seed(7)
    cases = [(torch.randn(3, 2, 1, 1, generator=g), torch.zeros(3), 0.375),
             (torch.randn(4, 1, 3, 3, generator=g), torch.randn(4, generator=g), 0.375),
             (torch.randn(2, 5, 3, 3, generator=g), torch.randn(2, generator=g), 1.0)]
    for weight, bias, shift in cases:
        want = fold_bias_solution(weight, bias, shift)
        got = c.run(fn, weight, bias, shift)
        if got is FAILED:  # the reason is recorded: one message is enough
            break
        c.tensor_close(got, want, f"weight {tuple(weight.shape)}, shift {shift}", atol=1e-5)


@exercise("KL divergence of two Gaussians", gaussian_kl_solution,
          hint="1/2 [log(var_q/var_p) + (var_p + (mu_p - mu_q)^2) / var_q - 1]; note: variances, not stds")
def check_gaussian_kl(c, fn) -> None:
    """Exercise 2: ``fn(mu_p, var_p, mu_q, var_q)`` returns KL(N_p || N_q) element-wise."""
    cases = [(torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([1.0])),
             (torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.5]), torch.tensor([1.0, 1.0]), torch.tensor([1.0, 2.0])),
             (torch.tensor([2.0, -1.0, 0.3]), torch.tensor([0.2, 3.0, 1.0]), torch.tensor([1.5, 0.0, 0.3]),
              torch.tensor([0.4, 1.0, 0.25]))]
    for args in cases:
        want = gaussian_kl_solution(*args)
        got = c.run(fn, *args)
        if got is FAILED:
            break
        c.tensor_close(got, want, f"mu_p={args[0].tolist()}", atol=1e-5)


@exercise("choosing the layers to freeze", pick_frozen_solution,
          hint="freeze round(fraction * len(scores)) layers in total: rank the unfrozen ones by score, "
               "take as many as are missing (the layers frozen earlier need not be the top-scored ones)")
def check_pick_frozen(c, fn) -> None:
    """Exercise 3: ``fn(scores, frozen, fraction)`` lists the layers to freeze next, largest AIWQ first."""
    scores = {"dw1": 0.9, "pw1": 0.1, "dw2": 0.7, "pw2": 0.2, "ex3": 0.3, "dw3": 0.8}
    # PROFIT freezes by the scores of the moment, so earlier picks can rank low now (the last two cases)
    cases = [(scores, [], 1 / 3), (scores, ["dw1", "dw3"], 2 / 3), (scores, ["dw1", "dw3"], 1 / 3),
             (scores, [], 1.0), (scores, ["pw1"], 1 / 3), (scores, ["ex3", "pw2"], 2 / 3)]
    for args in cases:
        want = pick_frozen_solution(*args)
        got = c.run(fn, *args)
        if got is FAILED:
            break
        c.expect(list(got) == want, f"frozen={args[1]}, fraction={args[2]:.2f}: expected {want}, got {describe(got)}")
