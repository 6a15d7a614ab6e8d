import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from mpqlab.errors import BitWidthError, QuantParamError, TensorValueError  # noqa: E402
from mpqlab.widgets.log_grid import (  # noqa: E402
    fsr_slider_range, linear_grid_levels, linear_grid_quantize, log_grid, log_grid_panel, render_log_grid,
)


@pytest.fixture
def w():
    return torch.randn(2000, generator=torch.Generator().manual_seed(0)) * 0.1  # weight-like: many small values


def test_error_and_counts_match_a_direct_computation(w):
    r = log_grid(w, bits=4, fsr=-2, base="2")
    x = w.double()
    # direct reading of the rule: 3 magnitude bits -> exponents -9 .. -3, below -9.5 -> 0, above -2.5 clipped
    k = torch.round(torch.log2(x.abs()))
    expected = torch.where(k <= -10, 0.0, torch.sign(x) * 2.0 ** k.clamp(max=-3))
    assert torch.equal(r.w_hat, expected)
    assert r.mse == pytest.approx(float(((expected - x) ** 2).mean()), rel=1e-12)
    assert r.zero_fraction == pytest.approx(float((k <= -10).double().mean()))
    assert r.clipped_fraction == pytest.approx(float((k > -3).double().mean()))
    assert r.levels_used == torch.unique(expected).numel()
    assert len(r.levels) == 2**4 - 1


def test_linear_reference_is_the_narrow_symmetric_grid(w):
    q = linear_grid_quantize(w, 3)
    step = float(w.abs().max()) / 3  # 3 bits, narrow: codes -3 .. 3
    codes = q.double() / step
    assert torch.allclose(codes, codes.round(), atol=1e-5)
    assert len(torch.unique(q)) <= 7
    assert float((q - w).abs().max()) <= step / 2 + 1e-6


def test_more_bits_never_hurt_at_the_data_driven_fsr(w):
    errors = [log_grid(w, b, fsr_slider_range(w, "2")[2]).mse for b in (2, 3, 4, 5, 6)]
    assert all(a >= b for a, b in zip(errors, errors[1:]))


def test_sqrt2_base_has_half_octave_levels(w):
    r = log_grid(w, bits=3, fsr=-4, base="sqrt2", signed=False)
    mags = r.levels[1:]
    assert torch.allclose(mags[1:] / mags[:-1], torch.full((len(mags) - 1,), math.sqrt(2), dtype=torch.float64))


def test_fsr_range_follows_the_base(w):
    lo2, hi2, v2 = fsr_slider_range(w, "2")
    lo, hi, v = fsr_slider_range(w, "sqrt2")
    assert lo2 < v2 < hi2 and lo < v < hi
    assert hi - lo == 2 * (hi2 - lo2)  # sqrt(2) counts half octaves


def test_render_returns_a_figure_and_the_summary(w):
    fig, text = render_log_grid(w, 4, -2, "2", title="test")
    assert fig is not None and len(fig.axes) == 2
    assert text.startswith("MSE: ") and "levels used: " in text
    plt.close(fig)


@pytest.mark.parametrize("bits,fsr,base,err", [
    (1, 0, "2", BitWidthError), (17, 0, "2", BitWidthError),
    (4, 0.5, "2", QuantParamError), (4, 0, "e", QuantParamError),
])
def test_bad_controls_raise_and_render_as_a_message(w, bits, fsr, base, err):
    with pytest.raises(err):
        log_grid(w, bits, fsr, base)
    fig, text = render_log_grid(w, bits, fsr, base)
    assert fig is None and text.startswith("Error: ")


def test_bad_data_raises():
    with pytest.raises(TensorValueError):
        log_grid(torch.tensor([0.1, float("nan")]), 4, 0)
    fig, text = render_log_grid(torch.tensor([]), 4, 0)
    assert fig is None and "empty" in text


def test_panel_wires_the_controls_and_shows_errors_as_text(w, monkeypatch):
    import ipywidgets as widgets

    shown, calls = [], []
    monkeypatch.setattr("IPython.display.display", lambda *objs: shown.extend(objs))

    def fake_render(w_, bits, fsr, base, title=""):  # no drawing: this test is about the wiring
        calls.append((bits, fsr, base))
        return None, "Error: stub"

    monkeypatch.setattr("mpqlab.widgets.log_grid.render_log_grid", fake_render)
    log_grid_panel(w, bits=3)
    box = next(obj for obj in shown if isinstance(obj, widgets.VBox))
    controls = {c.description: c for c in box.children[0].children}
    assert set(controls) == {"bits", "fsr", "base"}
    assert isinstance(controls["base"], widgets.Dropdown)
    assert calls[-1] == (3, fsr_slider_range(w, "2")[2], "2")
    assert any("Error: stub" in getattr(obj, "data", "") for obj in shown)  # the message, not a traceback
    controls["base"].value = "sqrt2"
    lo, hi, value = fsr_slider_range(w, "sqrt2")
    assert (controls["fsr"].min, controls["fsr"].max, controls["fsr"].value) == (lo, hi, value)
    assert calls[-1] == (3, value, "sqrt2")
    controls["bits"].value = 5
    assert calls[-1] == (5, value, "sqrt2")


@pytest.mark.parametrize("signed", [True, False])
def test_linear_levels_are_the_values_the_linear_grid_outputs(w, signed):
    levels = linear_grid_levels(w, 4, signed)
    assert len(levels) == (15 if signed else 16)
    assert torch.isin(linear_grid_quantize(w, 4, signed).double(), levels.float().double()).all()


def test_tensors_without_magnitudes_show_a_message_instead_of_raising():
    """All zeros used to crash the log2|w| histogram (min of an empty array) outside the try."""
    fig, text = render_log_grid(torch.zeros(10), 4, 1)
    assert fig is None and text.startswith("Error: ") and "no nonzero values" in text
    with pytest.raises(TensorValueError, match="no positive values"):
        log_grid(-torch.rand(5, generator=torch.Generator().manual_seed(0)), 4, 0, signed=False)


def test_fsr_range_checks_the_tensor_and_takes_integer_ones():
    assert fsr_slider_range(torch.ones(4, dtype=torch.bool), "2") == fsr_slider_range(torch.ones(4), "2")
    with pytest.raises(TensorValueError, match="empty"):
        fsr_slider_range(torch.tensor([]), "2")


def test_panel_shows_a_bad_tensor_as_a_red_message(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda *objs: shown.extend(objs))
    log_grid_panel(torch.zeros(10))  # the real render_log_grid, through the panel's callback
    assert any("no nonzero values" in getattr(obj, "data", "") and "#c0392b" in obj.data for obj in shown)
