"""Which KL candidates get an infinite divergence without smoothing (the claim of mpqlab/quant/kl.py's docstring).

Only a candidate whose last group of Q holds no values of its own, while outliers are folded onto P's last bin,
has q_k = 0 < p_k. An empty last *bin* alone is harmless when its group holds other values.
"""

import numpy as np

from mpqlab.quant.kl import kl_curve


def kl_by_candidate(hist, num_levels=2, eps=0.0):
    with np.errstate(divide="ignore"):
        candidates, kl = kl_curve(np.asarray(hist, dtype=float), num_levels, eps=eps)
    return dict(zip(candidates.tolist(), kl.tolist()))


def test_only_candidates_whose_last_group_is_empty_are_infinite():
    kl = kl_by_candidate([5, 3, 0, 0, 0, 1])  # one outlier in bin 5, bins 2-4 empty
    # i = 3 and i = 4: the last group (bin 2; bins 2-3) holds nothing of its own, the outlier lands on it
    assert np.isinf(kl[3]) and np.isinf(kl[4])
    assert np.isfinite(kl[2]) and np.isfinite(kl[6])  # last group = bin 1 (3 values); no outliers at all


def test_an_empty_last_bin_with_outliers_stays_finite_if_its_group_has_values():
    kl = kl_by_candidate([5, 3, 2, 0, 0, 1])
    # i = 4: bins 2-3 form the last group; bin 3 (the last bin) is empty and receives the outlier, bin 2 holds 2
    assert np.isfinite(kl[4])


def test_smoothing_makes_every_candidate_finite():
    kl = kl_by_candidate([5, 3, 0, 0, 0, 1], eps=1e-4)
    assert all(np.isfinite(v) for v in kl.values())
    assert kl[4] > kl[2]  # the formerly infinite candidate is still penalised
