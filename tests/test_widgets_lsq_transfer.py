import pytest
import torch

from mpqlab.errors import BitWidthError, QuantParamError
from mpqlab.quant.lsq import lsq_quantize
from mpqlab.widgets.lsq_transfer import lsq_transfer, plot_lsq_transfer, render_lsq_transfer


def test_summary_line_for_4_bit_signed():
    r = lsq_transfer(4, 0.1, signed=True)
    assert r.summary() == "levels: 16, step: 0.100, clip range: [-0.800, 0.700]"
    assert lsq_transfer(3, 0.25, signed=False).summary() == "levels: 8, step: 0.250, clip range: [0.000, 1.750]"


def test_output_on_grid_and_matches_package_quantizer():
    r = lsq_transfer(3, 0.2, signed=True, n_points=301)
    codes = r.v_hat / 0.2
    assert torch.allclose(codes, codes.round(), atol=1e-5)
    assert codes.min() == -4 and codes.max() == 3
    assert torch.allclose(r.v_hat, lsq_quantize(r.v, torch.tensor(0.2), -4, 3), atol=1e-6)


def test_step_gradient_follows_the_lsq_formula():
    r = lsq_transfer(2, 0.5, signed=False, n_points=401)
    v = r.v / 0.5
    inside = (v > 0) & (v < 3)
    expected = torch.where(v <= 0, torch.zeros_like(v), torch.where(v >= 3, torch.full_like(v, 3.0), v.round() - v))
    assert torch.allclose(r.grad_step[inside], expected[inside], atol=1e-5)
    assert torch.all(r.grad_step[r.v > 1.6] == 3.0)  # Q_P above the grid
    assert torch.all(r.grad_step[r.v < -0.01] == 0.0)  # -Q_N = 0 below an unsigned grid


def test_bad_controls_raise_specific_errors_and_render_shows_them():
    with pytest.raises(QuantParamError, match="step"):
        lsq_transfer(4, 0.0)
    with pytest.raises(BitWidthError, match="from 2 to 8"):
        lsq_transfer(1, 0.1, signed=True)
    fig, text = render_lsq_transfer(4, -0.1)
    assert fig is None and text.startswith("Error:") and "step" in text


def test_plot_returns_a_figure():
    import matplotlib.pyplot as plt

    fig = plot_lsq_transfer(lsq_transfer(1, 0.3, signed=False))
    assert len(fig.axes) == 2
    plt.close(fig)


@pytest.mark.parametrize("step", [1e38, 1e-45])
def test_steps_outside_float32_are_a_message(step):
    """1e38 used to overflow torch.linspace (a RuntimeError); 1e-45 is below float32's normal range."""
    with pytest.raises(QuantParamError, match="outside float32"):
        lsq_transfer(2, step, signed=False)
    fig, text = render_lsq_transfer(2, step, False)
    assert fig is None and text.startswith("Error: ") and "float32" in text


def test_panel_shows_a_zero_step_as_a_red_message(monkeypatch):
    from mpqlab.widgets.lsq_transfer import lsq_transfer_panel

    shown = []
    monkeypatch.setattr("IPython.display.display", lambda *objs: shown.extend(objs))
    lsq_transfer_panel(step=0.0)  # the slider starts at 0: the real render, through the panel's callback
    assert any("step" in getattr(obj, "data", "") and "#c0392b" in obj.data for obj in shown)
