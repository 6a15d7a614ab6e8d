"""mpqlab.limpq.sensitivity: single-layer LSQ models, step read-out, values per level, normalisation, fit."""

import math

import numpy as np
import pytest
import torch

from mpqlab.errors import BitWidthError, PolicyError, QuantParamError, TensorValueError
from mpqlab.limpq.sensitivity import (
    accuracy_drops, drop_by_layer, dw_minus_pw_extra_loss, dw_minus_pw_extra_loss_by_pair, extra_losses,
    initialize_steps, layer_steps, linear_fit, normalised_degradation, quantize_single_layer, step_ratio_summary,
    values_per_level,
)
from mpqlab.models import mobilenet_v1_small
from mpqlab.quant.layers import QuantConv2d
from mpqlab.quant.lsq import LSQQuantizer
from mpqlab.stats import mean_interval


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return mobilenet_v1_small().eval()


def test_only_the_named_layer_is_quantized(model):
    q = quantize_single_layer(model, "dw4.conv", 2)
    quantized = [n for n, m in q.named_modules() if isinstance(m, QuantConv2d)]
    assert quantized == ["dw4.conv"]
    w_q, a_q = q.dw4.conv.w_quantizer, q.dw4.conv.a_quantizer
    assert isinstance(w_q, LSQQuantizer) and w_q.signed and w_q.bits == 2
    assert isinstance(a_q, LSQQuantizer) and not a_q.signed and a_q.bits == 2
    assert not isinstance(model.dw4.conv, QuantConv2d)  # the float model is left alone


def test_initial_steps_follow_lsq(model):
    q = quantize_single_layer(model, "pw7.conv", 4)
    images = torch.randn(8, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    initialize_steps(q, images)
    steps = layer_steps(q, "pw7.conv")
    w = q.pw7.conv.weight.detach()
    assert steps["w_step"] == pytest.approx(2 * w.abs().mean().item() / math.sqrt(7), rel=1e-5)
    assert steps["a_step"] > 0
    w_hat = q.pw7.conv.w_quantizer(w)
    assert len(torch.unique(w_hat)) <= 16 and torch.allclose(w_hat / steps["w_step"], torch.round(w_hat / steps["w_step"]))


def test_bad_layers_and_bits_are_refused(model):
    with pytest.raises(PolicyError, match="first layer"):
        quantize_single_layer(model, "conv1.conv", 4)
    with pytest.raises(PolicyError, match="dw99"):
        quantize_single_layer(model, "dw99.conv", 4)
    with pytest.raises(BitWidthError, match="1"):
        quantize_single_layer(model, "dw1.conv", 1)
    with pytest.raises(PolicyError, match="no LSQ"):
        layer_steps(model, "dw1.conv")


def test_values_per_level_matches_brute_force():
    x = torch.randn(500, generator=torch.Generator().manual_seed(2)).round(decimals=2)  # many repeats
    counts = values_per_level(x, 0.33, 3)  # 0.33 keeps x / s off the .5 ties
    assert list(counts) == list(range(-4, 4))
    for q, n in counts.items():
        distinct = {round(v, 6) for v in x.tolist() if max(-4, min(3, round(v / 0.33))) == q}
        assert n == len(distinct)
    assert sum(counts.values()) == len(torch.unique(x))


def test_a_larger_step_puts_more_distinct_values_on_a_level():
    x = torch.linspace(-1, 1, 2001)
    small, large = values_per_level(x, 0.1, 4), values_per_level(x, 0.2, 4)
    assert large[1] > small[1] and large[1] == pytest.approx(2 * small[1], abs=1)


def test_values_per_level_errors():
    with pytest.raises(QuantParamError, match="scale"):
        values_per_level(torch.ones(3), 0.0, 2)
    with pytest.raises(TensorValueError, match="empty"):
        values_per_level(torch.ones(0), 0.1, 2)
    with pytest.raises(BitWidthError):
        values_per_level(torch.ones(3), 0.1, 1, signed=True)


def test_normalised_degradation():
    d = normalised_degradation(0.9, [0.8, 0.85, 0.91])
    assert np.allclose(d, [1.0, 0.5, -0.1])
    with pytest.raises(TensorValueError, match="no run is below"):
        normalised_degradation(0.9, [0.9, 0.95])
    with pytest.raises(TensorValueError, match="finite"):
        normalised_degradation(0.9, [float("nan")])


def test_linear_fit_matches_numpy():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=20), rng.normal(size=20)
    slope, intercept = linear_fit(x, y)
    assert np.allclose([slope, intercept], np.polyfit(x, y, 1))
    with pytest.raises(TensorValueError, match="distinct x"):
        linear_fit([1.0, 1.0], [0.0, 1.0])


# Statistics over seeds, on a tiny fake result of mpqlab.experiments.dw_pw_sensitivity (drops in points).
CONTROLS = {0: 0.90, 1: 0.92, 2: 0.91}
DROPS = {  # (pair, kind, bits): drop in points for seeds 0, 1, 2
    (1, "dw", 4): [1, 2, 3], (1, "dw", 2): [5, 7, 6], (1, "pw", 4): [0.5, 0.5, 0.5], (1, "pw", 2): [1.5, 2.5, 1.5],
    (4, "dw", 4): [0, 1, 2], (4, "dw", 2): [3, 3, 3], (4, "pw", 4): [1, 1, 1], (4, "pw", 2): [1, 2, 3],
}


def fake_result():
    runs = [{"layer": f"{kind}{pair}.conv", "pair": pair, "kind": "depthwise" if kind == "dw" else "pointwise",
             "bits": bits, "seed": seed, "accuracy": CONTROLS[seed] - drop / 100,
             "w_step": 1.0, "w_step_init": 1.0, "a_step": 2.0, "a_step_init": 2.0}
            for (pair, kind, bits), drops in DROPS.items() for seed, drop in enumerate(drops)]
    runs[0].update(w_step=1.1)  # the fine-tune moved this step by +10 %
    runs[5].update(a_step=1.4)  # and this one by -30 %
    return {"controls": [{"seed": s, "accuracy": a} for s, a in CONTROLS.items()], "runs": runs}


def test_drops_are_against_the_same_seeds_control():
    drops = accuracy_drops(fake_result())
    assert [r["drop"] for r in drops[:3]] == pytest.approx([1, 2, 3])
    rows = {(r["layer"], r["bits"]): r for r in drop_by_layer(fake_result())}
    assert len(rows) == 8
    dw1 = rows[("dw1.conv", 4)]
    assert (dw1["kind"], dw1["pair"], dw1["n"]) == ("depthwise", 1, 3)
    assert dw1["mean"] == pytest.approx(2) and dw1["sd"] == pytest.approx(1)
    assert (dw1["low"], dw1["high"]) == pytest.approx((2 - 4.303 / math.sqrt(3), 2 + 4.303 / math.sqrt(3)), abs=1e-3)
    assert rows[("pw1.conv", 4)]["sd"] == pytest.approx(0, abs=1e-9)


def test_extra_loss_from_4_to_2_bits_depthwise_minus_pointwise():
    rows = extra_losses(fake_result())
    assert [(r["pair"], r["seed"]) for r in rows] == [(1, 0), (1, 1), (1, 2), (4, 0), (4, 1), (4, 2)]
    assert [r["depthwise"] for r in rows] == pytest.approx([4, 5, 3, 3, 2, 1])
    assert [r["pointwise"] for r in rows] == pytest.approx([1, 2, 1, 0, 1, 2])
    diff = dw_minus_pw_extra_loss(fake_result())
    expected = mean_interval([3, 3, 2, 3, 1, -1])
    assert (diff.mean, diff.low, diff.high, diff.n) == pytest.approx((expected.mean, expected.low, expected.high, 6))
    by_pair = dw_minus_pw_extra_loss_by_pair(fake_result())
    assert list(by_pair) == [1, 4]
    assert by_pair[1].mean == pytest.approx(8 / 3) and by_pair[1].n == 3 and by_pair[1].detectable
    assert by_pair[4].mean == pytest.approx(1) and not by_pair[4].detectable


def test_step_ratio_summary_is_the_largest_relative_move():
    assert step_ratio_summary(fake_result()) == pytest.approx({"w_step": 0.1, "a_step": 0.3})


def test_seed_statistics_refuse_incomplete_results():
    result = fake_result()
    result["controls"] = result["controls"][:2]
    with pytest.raises(TensorValueError, match="no control run for seed"):
        drop_by_layer(result)
    result = fake_result()
    result["runs"] = [r for r in result["runs"] if not (r["layer"] == "pw4.conv" and r["bits"] == 2 and r["seed"] == 1)]
    with pytest.raises(TensorValueError, match="pair 4, seed 1: no pointwise run at 2 bits"):
        dw_minus_pw_extra_loss(result)
    one_seed = fake_result()
    one_seed["runs"] = [r for r in one_seed["runs"] if r["seed"] == 0]
    with pytest.raises(TensorValueError, match="at least 2"):
        drop_by_layer(one_seed)
    with pytest.raises(TensorValueError, match="no runs"):
        step_ratio_summary({"controls": [], "runs": []})
