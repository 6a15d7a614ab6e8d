"""The quantizer explorer of notebook 01: its pure function against direct computation, errors, and the panel."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from mpqlab.errors import BitWidthError, QuantParamError, TensorValueError  # noqa: E402
from mpqlab.widgets.quantizer_explorer import (  # noqa: E402
    METHODS, explore_quantizer, quantizer_explorer_panel, render_quantizer,
)


@pytest.fixture
def w():
    """Conv-like weights (8, 4, 3, 3) whose channels have very different ranges."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 4, 3, 3, generator=g) * torch.logspace(-2, 0, 8)[:, None, None, None]


@pytest.fixture
def act():
    """ReLU-like activations (16, 4, 5, 5): many exact zeros, a long right tail."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(64, 4, 8, 8, generator=g).relu() ** 2


def test_symmetric_per_tensor_minmax_by_hand(w):
    r = explore_quantizer(w, bits=4, symmetric=True, per_channel=False, method="minmax")  # restricted by default
    scale = w.abs().max() / 7  # signed 4-bit, restricted range [-7, 7]: 14 steps across [-max|w|, max|w|]
    q = torch.round(w / scale).clamp(-7, 7)
    assert r.narrow and r.q_min == -7 and r.q_max == 7 and r.range_name == "restricted"
    assert r.scale.item() == pytest.approx(scale.item(), rel=1e-6) and r.zero_point.item() == 0
    assert torch.allclose(r.x_hat, q * scale)
    assert r.mse == pytest.approx(float(((q * scale - w) ** 2).mean()), rel=1e-5)
    assert r.levels_used == torch.unique(q).numel() and r.levels == 15
    assert r.clip_low == pytest.approx(-7 * scale.item()) and r.clip_high == pytest.approx(7 * scale.item())
    assert r.clip_high == pytest.approx(w.abs().max().item(), rel=1e-6)  # max|w| lands exactly on the top code
    assert r.clipped_fraction == 0.0
    assert torch.allclose(r.grid(), torch.arange(-7, 8) * scale)


def test_symmetric_full_range_by_hand(w):
    r = explore_quantizer(w, bits=4, symmetric=True, per_channel=False, method="minmax", narrow=False)
    scale = w.abs().max() / 7.5  # signed 4-bit, full range [-8, 7]: 15 steps across [-max|w|, max|w|]
    q = torch.round(w / scale).clamp(-8, 7)
    assert not r.narrow and r.q_min == -8 and r.q_max == 7 and r.range_name == "full range"
    assert r.scale.item() == pytest.approx(scale.item(), rel=1e-6) and r.zero_point.item() == 0
    assert torch.allclose(r.x_hat, q * scale)
    assert r.levels_used == torch.unique(q).numel() and r.levels == 16
    assert r.clip_low == pytest.approx(-8 * scale.item()) and r.clip_high == pytest.approx(7 * scale.item())
    assert r.clipped_fraction == 0.0  # min-max clips nothing (the top value rounds onto 7 at most half a step away)
    assert torch.allclose(r.grid(), torch.arange(-8, 8) * scale)


@pytest.mark.parametrize("method,per_channel", [(m, pc) for m in METHODS for pc in (False, True)
                                                if not (m == "kl" and pc)])  # KL is per tensor only
def test_symmetric_codes_follow_the_range_for_every_method(w, method, per_channel):
    for narrow, (q_min, q_max) in ((True, (-7, 7)), (False, (-8, 7))):
        r = explore_quantizer(w, 4, True, per_channel, method, ch_axis=0, narrow=narrow)
        assert (r.q_min, r.q_max, r.narrow) == (q_min, q_max, narrow)
        scale = r.scale.reshape(-1, 1, 1, 1) if per_channel else r.scale
        codes = torch.round(r.x_hat / scale)  # zero point 0: the codes the grid used
        assert int(codes.min()) >= q_min and int(codes.max()) <= q_max


def test_asymmetric_ignores_narrow(act):
    restricted = explore_quantizer(act, 4, False, False, "minmax", narrow=True)
    full = explore_quantizer(act, 4, False, False, "minmax", narrow=False)
    assert not restricted.narrow and not full.narrow and restricted.range_name == ""
    assert (restricted.q_min, restricted.q_max) == (full.q_min, full.q_max) == (0, 15)
    assert torch.equal(restricted.x_hat, full.x_hat)


def test_restricted_beats_full_range_on_the_top_weight(w):
    # restricted: every channel's max|w| is exactly on the grid; full range: it moves by half a step
    restricted = explore_quantizer(w, 4, True, True, "minmax")
    full = explore_quantizer(w, 4, True, True, "minmax", narrow=False)
    rows, top = w.flatten(1), w.flatten(1).abs().argmax(1, keepdim=True)
    move_r = (restricted.x_hat.flatten(1) - rows).gather(1, top).abs().squeeze(1) / restricted.scale
    move_f = (full.x_hat.flatten(1) - rows).gather(1, top).abs().squeeze(1) / full.scale
    assert float(move_r.max()) < 1e-4 and float(move_f.min()) == pytest.approx(0.5, abs=1e-4)


def test_restricted_one_bit_is_refused_but_full_range_one_bit_works(w):
    with pytest.raises(BitWidthError, match="narrow"):
        explore_quantizer(w, 1, True, False, "minmax")
    assert explore_quantizer(w, 1, True, False, "minmax", narrow=False).levels == 2
    assert explore_quantizer(w, 1, False, False, "minmax").levels == 2  # asymmetric: narrow ignored


def test_per_channel_beats_per_tensor_on_uneven_channels(w):
    per_tensor = explore_quantizer(w, 4, True, False, "minmax")
    per_channel = explore_quantizer(w, 4, True, True, "minmax", ch_axis=0)
    assert per_channel.scale.shape == (8,)
    assert per_channel.mse < per_tensor.mse / 2
    assert per_channel.channel_error < per_tensor.channel_error / 10  # small channels gain most
    rows, rows_hat = w.flatten(1), per_tensor.x_hat.flatten(1)
    by_hand = ((rows_hat - rows) ** 2).mean(1) / (rows ** 2).mean(1)
    assert per_tensor.channel_error == pytest.approx(by_hand.mean().item(), rel=1e-5)
    with pytest.raises(QuantParamError, match="per-tensor only"):
        per_channel.grid()


def test_asymmetric_uses_the_whole_grid_on_relu_outputs(act):
    sym = explore_quantizer(act, 4, True, False, "minmax")
    asym = explore_quantizer(act, 4, False, False, "minmax")
    assert sym.levels_used <= 8  # the negative half of a signed grid is never used: codes 0 .. 7 at most
    assert asym.zero_point.item() == 0 and asym.levels_used > sym.levels_used
    assert asym.mse < sym.mse


@pytest.mark.parametrize("method", ["percentile", "mse", "kl"])
def test_calibration_methods_clip_the_tail_and_cut_the_error_at_low_bits(act, method):
    minmax = explore_quantizer(act, 3, False, False, "minmax")
    r = explore_quantizer(act, 3, False, False, method)
    assert r.clip_high < minmax.clip_high
    assert r.clipped_fraction > 0
    if method == "mse":  # min-max is one of MSE's candidates, so it can only do better
        assert r.mse < minmax.mse


def test_more_bits_never_hurt_minmax(w):
    errors = [explore_quantizer(w, b, False, True, "minmax").mse for b in range(2, 9)]
    assert all(a > b for a, b in zip(errors, errors[1:]))


def test_summary_line(w):
    text = explore_quantizer(w, 4, True, False, "minmax").summary()
    assert text.startswith("MSE: ") and "levels used: " in text and " of 15, clip: [" in text  # restricted [-7, 7]
    assert "channel error: " in text


def test_all_zero_channels_count_as_exact(act):
    act = act.clone()
    act[:, 0] = 0  # a dead channel: quantized exactly, error 0 rather than 0 / 0
    r = explore_quantizer(act, 4, False, True, "minmax", ch_axis=1)
    assert 0 <= r.channel_error < 1 and r.channel_error == r.channel_error  # finite, not NaN


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(bits=0), BitWidthError, "bits"),
    (dict(bits=17), BitWidthError, "bits"),
    (dict(method="kl", per_channel=True), QuantParamError, "per tensor"),
    (dict(method="median"), QuantParamError, "unknown calibration method"),
    (dict(per_channel=True, ch_axis=4), QuantParamError, "ch_axis"),
    (dict(narrow="yes"), QuantParamError, "narrow must be True"),
    (dict(bits=1), BitWidthError, "narrow range needs bits >= 2"),
])
def test_bad_controls_raise_and_render_as_a_message(w, kwargs, err, match):
    args = dict(bits=4, symmetric=True, per_channel=False, method="minmax", ch_axis=0) | kwargs
    with pytest.raises(err, match=match):
        explore_quantizer(w, **args)
    fig, text = render_quantizer(w, **args)
    assert fig is None and text.startswith("Error: ")


def test_bad_data_raises():
    with pytest.raises(TensorValueError):
        explore_quantizer(torch.tensor([0.1, float("nan")]), 4)
    fig, text = render_quantizer(torch.tensor([]), 4, True, False, "minmax")
    assert fig is None and "empty" in text


def test_render_returns_a_figure_and_the_summary(w):
    for per_channel in (False, True):
        fig, text = render_quantizer(w, 4, False, per_channel, "mse", 0, title="w")
        assert fig is not None and len(fig.axes) == 2 and text.startswith("MSE: ")
        plt.close(fig)


@pytest.mark.parametrize("symmetric,narrow,words", [
    (True, True, "4-bit symmetric restricted [-7, 7] per-tensor"),
    (True, False, "4-bit symmetric full range [-8, 7] per-tensor"),
    (False, True, "4-bit asymmetric [0, 15] per-tensor"),
])
def test_figure_title_names_the_grid(w, symmetric, narrow, words):
    fig, text = render_quantizer(w, 4, symmetric, False, "minmax", 0, title="w", narrow=narrow)
    assert fig.axes[0].get_title() == f"w: {words}, min-max"
    assert f" of {15 if symmetric and narrow else 16}," in text


def test_panel_callback_redraws_and_shows_errors_as_messages(w, act, monkeypatch, capsys):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda *objs: shown.extend(objs))
    monkeypatch.setattr(plt, "show", lambda *a, **k: plt.close("all"))
    # the wiring is under test here, not the drawing (tested above): a blank figure keeps the test fast
    monkeypatch.setattr("mpqlab.widgets.quantizer_explorer.plot_quantizer", lambda result, x, title="": plt.figure())
    quantizer_explorer_panel({"weights": (w, 0), "activations": (act, 1)}, bits=4)
    box = shown[-1]
    controls = {c.description: c for row in box.children[:2] for c in row.children}
    assert set(controls) == {"tensor", "bits", "calibration", "scheme", "range", "granularity"}
    assert [label for label, _ in controls["calibration"].options] == [label for label, _ in METHODS.values()]
    first = capsys.readouterr().out.strip().splitlines()
    assert first and first[-1].startswith("MSE: ") and "of 15" in first[-1]  # symmetric restricted [-7, 7]

    controls["bits"].value = 6  # every control change calls the pure function again
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "of 63" in line and line != first[-1]

    controls["range"].value = False  # full range [-32, 31]
    assert "of 64" in capsys.readouterr().out.strip().splitlines()[-1]
    controls["scheme"].value = False  # asymmetric: the range buttons are greyed out, all 2^b codes
    assert controls["range"].disabled and "of 64" in capsys.readouterr().out.strip().splitlines()[-1]
    controls["scheme"].value = True
    assert not controls["range"].disabled
    controls["range"].value = True
    assert "of 63" in capsys.readouterr().out.strip().splitlines()[-1]

    controls["granularity"].value = True
    controls["calibration"].value = "kl"  # KL per channel: an error message, not an exception
    html = [o for o in shown if type(o).__name__ == "HTML"]
    assert html and "Error: KL calibration works per tensor" in html[-1].data

    controls["granularity"].value = False  # back to a valid combination
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("MSE: ")
    controls["tensor"].value = "activations"
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("MSE: ")


def test_grid_ends_beyond_float32_are_a_message():
    x = torch.tensor([3.4e38, -3.4e38, 1.0])
    with pytest.raises(TensorValueError, match="overflow float32"):  # full range: -8 s = -3.4e38 * 8 / 7.5
        explore_quantizer(x, 4, True, False, "minmax", narrow=False)
    fig, text = render_quantizer(x, 4, True, False, "minmax", narrow=False)
    assert fig is None and text.startswith("Error: ") and "scale x down" in text
    r = explore_quantizer(x, 4, True, False, "minmax")  # restricted: the grid ends at +-max|x|, inside float32
    assert r.clip_high == pytest.approx(3.4e38, rel=1e-6) and bool(torch.isfinite(r.x_hat).all())


@pytest.mark.parametrize("x", [torch.tensor([1e-45, -1e-45, 0.0, 3e-45]), torch.tensor([1e30, -2e30, 5e29])])
def test_tiny_and_large_values_draw_with_finite_errors(x):
    from mpqlab.plots import figure_png

    fig, text = render_quantizer(x, 4, False, False, "minmax")
    assert fig is not None and figure_png(fig).startswith(b"\x89PNG")
    r = explore_quantizer(x, 4, False, False, "minmax")
    assert r.mse < float("inf") and r.channel_error == r.channel_error  # float64: no inf square, no inf / inf


def test_panel_shows_bad_data_as_a_red_message(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda *objs: shown.extend(objs))
    quantizer_explorer_panel({"huge": (torch.tensor([3.4e38, -3.4e38]), 0)})  # the real render
    box = shown[-1]
    controls = {c.description: c for row in box.children[:2] for c in row.children}
    controls["range"].value = False  # the full-range grid's -8 s lies beyond float32
    messages = [obj.data for obj in shown if isinstance(getattr(obj, "data", None), str)]  # not the first PNG
    assert any("overflow float32" in data and "#c0392b" in data for data in messages)
