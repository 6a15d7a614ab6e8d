import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from mpqlab.errors import BitWidthError, TensorValueError
from mpqlab.quant.policy import quantize_model, uniform_policy
from mpqlab.quant.weighted_entropy import (
    WeightedEntropyActQuantizer, WeightedEntropyWeightQuantizer, act_levels, act_quantize, act_search,
    equal_population_levels, quantize_to_levels, we_act_quantizer, we_weight_quantizer, weighted_entropy,
    weighted_entropy_levels,
)


def test_weighted_entropy_by_hand():
    # cluster 0 holds importances {1, 1} (P = 1/2, I = 1), cluster 1 holds {4, 2} (P = 1/2, I = 3)
    importance = torch.tensor([1.0, 1.0, 4.0, 2.0])
    cluster = torch.tensor([0, 0, 1, 1])
    expected = -(1.0 * 0.5 * math.log(0.5) + 3.0 * 0.5 * math.log(0.5))
    assert weighted_entropy(importance, cluster) == pytest.approx(expected)


def entropy_of_bounds(mags, bounds):
    """S = -sum_k I_k P_k log P_k in plain Python, for clusters mags[bounds[k]:bounds[k+1]] of sorted |w|."""
    mags, n, s = [float(m) for m in mags], len(mags), 0.0
    for lo, hi in zip(bounds, bounds[1:]):
        p, i = (hi - lo) / n, sum(m * m for m in mags[lo:hi]) / (hi - lo)
        s -= i * p * math.log(p)
    return s


def test_entropy_field_matches_the_formula():
    w = torch.randn(300, generator=torch.Generator().manual_seed(0))
    c = weighted_entropy_levels(w, 3)
    mags = w.abs().double().sort().values
    assert c.entropy == pytest.approx(entropy_of_bounds(mags, c.bounds.tolist()), rel=1e-12)
    cluster = torch.bucketize(w.abs().double(), c.thresholds, right=True)
    assert c.entropy == pytest.approx(weighted_entropy(w.double() ** 2, cluster), rel=1e-12)
    assert c.converged and c.sweeps >= 1


@pytest.mark.parametrize("seed", range(3))
def test_one_boundary_reaches_the_brute_force_optimum(seed):
    w = torch.randn(40, generator=torch.Generator().manual_seed(seed))
    mags = w.abs().double().sort().values
    best = max(entropy_of_bounds(mags, [0, b, 40]) for b in range(1, 40))
    assert weighted_entropy_levels(w, 2).entropy == pytest.approx(best, rel=1e-12)


def test_result_is_a_local_maximum_and_beats_equal_population():
    w = torch.randn(24, generator=torch.Generator().manual_seed(3)) ** 3
    mags = w.abs().double().sort().values
    c = weighted_entropy_levels(w, 3)
    assert c.entropy > equal_population_levels(w, 3).entropy
    b = c.bounds.tolist()
    for j in range(1, len(b) - 1):  # no single boundary move raises S
        for pos in range(b[j - 1] + 1, b[j + 1]):
            assert entropy_of_bounds(mags, b[:j] + [pos] + b[j + 1:]) <= c.entropy * (1 + 1e-12)
    global_best = max(entropy_of_bounds(mags, [0, *cut, 24]) for cut in itertools.combinations(range(1, 24), 3))
    assert c.entropy <= global_best * (1 + 1e-12)


def test_equal_population_sizes_and_rms_levels():
    w = torch.randn(103, generator=torch.Generator().manual_seed(1))
    c = equal_population_levels(w, 3)
    sizes = (c.bounds[1:] - c.bounds[:-1]).tolist()
    assert len(sizes) == 4 and max(sizes) - min(sizes) <= 1
    mags = w.abs().double().sort().values
    first = mags[: sizes[0]]
    assert float(c.levels[0]) == pytest.approx(float(first.pow(2).mean().sqrt()))


def test_quantize_to_levels_uses_mirrored_levels_and_ste():
    w = torch.randn(200, generator=torch.Generator().manual_seed(2), requires_grad=True)
    c = weighted_entropy_levels(w, 3)
    w_hat = quantize_to_levels(w, c.levels, c.thresholds)
    allowed = torch.cat([c.levels, -c.levels]).float()
    assert torch.isin(w_hat.detach(), allowed).all()
    assert (torch.sign(w_hat) == torch.sign(w)).all()
    w_hat.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_all_zero_and_tiny_tensors():
    z = torch.zeros(10)
    c = weighted_entropy_levels(z, 4)
    assert torch.equal(quantize_to_levels(z, c.levels, c.thresholds), z)
    c3 = weighted_entropy_levels(torch.tensor([0.1, -0.5, 0.2]), 4)  # fewer weights than clusters
    assert len(c3.levels) == 3
    w3 = torch.tensor([0.1, -0.5, 0.2])
    assert torch.allclose(quantize_to_levels(w3, c3.levels, c3.thresholds), w3)


@pytest.mark.parametrize("bad,err", [
    (dict(bits=0), BitWidthError), (dict(bits=9), BitWidthError),
    (dict(w=torch.tensor([])), TensorValueError), (dict(w=torch.tensor([0.1, math.inf])), TensorValueError),
])
def test_weight_bad_inputs(bad, err):
    with pytest.raises(err):
        weighted_entropy_levels(**(dict(w=torch.ones(5), bits=2) | bad))


def test_act_levels_and_floor_mapping():
    levels = act_levels(2, fsr=-16, step=8)
    assert levels.tolist() == [0.0, 0.5, 2**-0.5, 1.0]
    a = torch.tensor([0.0, 0.49, 0.5, 0.7, 0.72, 5.0, -1.0], dtype=torch.float64)
    assert act_quantize(a, 2, -16, 8).tolist() == [0.0, 0.0, 0.5, 0.5, 2**-0.5, 1.0, 0.0]
    signed = act_quantize(torch.tensor([-0.72, 0.72], dtype=torch.float64), 3, -16, 8, signed=True)
    assert signed.tolist() == [-(2**-0.5), 2**-0.5]


def test_act_search_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(400, generator=g, dtype=torch.float64) * 1.5 + 0.5  # codes -16 .. 16: a short brute force
    a[:100] = 0.0
    fsr, step, s = act_search(a, 2)
    codes = np.floor(16 * np.log2(a[a > 0].numpy()))
    best = (-math.inf, None)
    for f in range(int(codes.min()), int(codes.max()) + 1):
        for t in range(1, 17):
            level = np.where(codes >= f, 1 + (codes - f) // t, 0).clip(max=3).astype(int)
            p = np.bincount(level, minlength=4)[1:] / a.numel()
            v = 2.0 ** ((f + np.arange(3) * t) / 16)
            best = max(best, (-sum(vi * pi * math.log(pi) for vi, pi in zip(v, p) if pi > 0), (f, t)))
    assert s == pytest.approx(best[0], rel=1e-9) and (fsr, step) == best[1]
    q = act_quantize(a, 2, fsr, step)  # the quantizer agrees with the search's bookkeeping
    levels = act_levels(2, fsr, step)
    index = torch.bucketize(q, levels)
    assert torch.equal(levels[index], q) and weighted_entropy(levels[index], index) == pytest.approx(s, rel=1e-9)


def test_act_search_all_zero_gives_zeros():
    fsr, step, s = act_search(torch.zeros(50), 3)
    assert s == 0.0 and torch.equal(act_quantize(torch.zeros(50), 3, fsr, step), torch.zeros(50))


def tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 3))


def test_plugs_into_quantize_model_and_fine_tunes():
    model = tiny_net()
    qmodel = quantize_model(model, uniform_policy(model, 3, 3), weight_quantizer=we_weight_quantizer,
                            act_quantizer=we_act_quantizer)
    assert isinstance(qmodel[0].w_quantizer, WeightedEntropyWeightQuantizer)
    assert isinstance(qmodel[0].a_quantizer, WeightedEntropyActQuantizer)
    torch.manual_seed(1)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,))
    losses = []
    # 30 steps take the loss down 23-50% (measured); a 10% drop is then certain, whatever the CPU's float sums.
    for _ in range(30):  # plain SGD by hand (torch.optim's first import costs seconds)
        loss = nn.functional.cross_entropy(qmodel(x), y)
        qmodel.zero_grad()
        loss.backward()
        losses.append(loss.item())
        with torch.no_grad():
            for p in qmodel.parameters():
                p -= 0.05 * p.grad
    assert losses[-1] < 0.9 * losses[0]
    assert qmodel[0].a_quantizer.signed is True and qmodel[2].a_quantizer.signed is False
    qmodel.eval()  # clears the cached weight levels: eval sees the weights after the last step
    conv = qmodel[2]
    levels = conv.w_quantizer(conv.weight).detach().abs().unique()
    assert len(levels) <= 4
