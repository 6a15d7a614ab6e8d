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
    r = explore_quantizer(w, bits=4, symmetric=True, per_channel=False, method="minmax")
    scale = w.abs().max() / 7.5  # signed 4-bit, full range [-8, 7]: 15 steps across [-max|w|, max|w|]
    q = torch.round(w / scale).clamp(-8, 7)
    assert r.scale.item() == pytest.approx(scale.item(), rel=1e-6) and r.zero_point.item() == 0
    assert torch.allclose(r.x_hat, q * scale)
    assert r.mse == pytest.approx(float(((q * scale - w) ** 2).mean()), rel=1e-5)
    assert r.levels_used == torch.unique(q).numel() and r.levels == 16
    assert r.clip_low == pytest.approx(-8 * scale.item()) and r.clip_high == pytest.approx(7 * scale.item())
    assert r.clipped_fraction == 0.0  # min-max clips nothing (the top value rounds onto 7 at most half a step away)
    assert torch.allclose(r.grid(), torch.arange(-8, 8) * scale)


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
    assert sym.levels_used <= 9  # the negative half of a signed grid is never used
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
    assert text.startswith("MSE: ") and "levels used: " in text and " of 16, clip: [" in text
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


def test_panel_callback_redraws_and_shows_errors_as_messages(w, act, monkeypatch, capsys):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda *objs: shown.extend(objs))
    monkeypatch.setattr(plt, "show", lambda *a, **k: plt.close("all"))
    # the wiring is under test here, not the drawing (tested above): a blank figure keeps the test fast
    monkeypatch.setattr("mpqlab.widgets.quantizer_explorer.plot_quantizer", lambda result, x, title="": plt.figure())
    quantizer_explorer_panel({"weights": (w, 0), "activations": (act, 1)}, bits=4)
    box = shown[-1]
    controls = {c.description: c for row in box.children[:2] for c in row.children}
    assert set(controls) == {"tensor", "bits", "calibration", "scheme", "granularity"}
    assert [label for label, _ in controls["calibration"].options] == [label for label, _ in METHODS.values()]
    first = capsys.readouterr().out.strip().splitlines()
    assert first and first[-1].startswith("MSE: ") and "of 16" in first[-1]

    controls["bits"].value = 6  # every control change calls the pure function again
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "of 64" in line and line != first[-1]

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
    with pytest.raises(TensorValueError, match="overflow float32"):
        explore_quantizer(x, 4, True, False, "minmax")
    fig, text = render_quantizer(x, 4, True, False, "minmax")
    assert fig is None and text.startswith("Error: ") and "scale x down" in text


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
    assert any("overflow float32" in getattr(obj, "data", "") and "#c0392b" in obj.data for obj in shown)
