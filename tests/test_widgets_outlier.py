import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from mpqlab.errors import BitWidthError, QuantParamError, TensorValueError  # noqa: E402
from mpqlab.widgets.outlier import outlier_grid, outlier_panel, plot_outlier_grid, render_outlier_grid  # noqa: E402


@pytest.fixture
def w():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5000, generator=g) * 0.05
    x[:10] = torch.tensor([1.0, -0.9, 0.8, -0.7, 0.6, 0.55, -0.5, 0.45, -0.4, 0.35])  # a few weight outliers
    return x


def test_grid_matches_a_direct_computation(w):
    r = outlier_grid(w, bits=3, ratio=0.01)
    mags = w.abs().sort().values
    t = float(mags[5000 - 50 - 1])  # 1% of 5000 values lie above t
    assert r.threshold == pytest.approx(t) and r.scale == pytest.approx(t / 3) and r.signed
    inside = w.abs() <= t
    expected = torch.where(inside, torch.round(w / (t / 3)).clamp(-3, 3) * (t / 3), w)
    assert torch.allclose(r.x_hat, expected, atol=1e-7)
    assert r.n_outliers == 50 and r.outlier_share == pytest.approx(0.01)
    assert r.mse == pytest.approx(float((expected - w).pow(2).mean()), rel=1e-5)
    assert torch.allclose(r.levels, torch.arange(-3, 4) * (t / 3))


def test_linear_reference_is_ratio_zero_and_worse_on_heavy_tails(w):
    r = outlier_grid(w, bits=4, ratio=0.005)
    lin = outlier_grid(w, bits=4, ratio=0.0)
    assert lin.n_outliers == 0 and lin.threshold == pytest.approx(1.0)
    assert r.linear_mse == pytest.approx(lin.mse) and torch.equal(r.linear_hat, lin.x_hat)
    assert r.mse < r.linear_mse / 10  # the step shrinks from 1/7 to about 0.2/7


def test_activations_are_unsigned(w):
    a = w.relu()
    r = outlier_grid(a, bits=2, ratio=0.02)
    assert not r.signed and len(r.levels) == 4 and float(r.levels.min()) == 0.0
    assert float(r.x_hat.min()) >= 0.0


@pytest.mark.parametrize("bits,ratio,error", [(1, 0.01, BitWidthError), (9.5, 0.01, BitWidthError),
                                              (3, 1.0, QuantParamError), (3, -0.01, QuantParamError)])
def test_bad_controls(w, bits, ratio, error):
    with pytest.raises(error):
        outlier_grid(w, bits, ratio)  # 1-bit signed has no symmetric grid
    fig, text = render_outlier_grid(w, bits, ratio)
    assert fig is None and text.startswith("Error: ")


def test_bad_tensors():
    with pytest.raises(TensorValueError):
        outlier_grid(torch.tensor([]), 3, 0.01)
    with pytest.raises(TensorValueError):
        outlier_grid(torch.tensor([1.0, float("nan")]), 3, 0.01)


def test_render_and_panel_draw(w):
    fig, text = render_outlier_grid(w, 3, 0.02, title="w")
    assert fig is not None and text.startswith("MSE: ") and "outliers: 100" in text
    plt.close(fig)
    fig = plot_outlier_grid(outlier_grid(w.relu(), 3, 0.0), w.relu())
    assert len(fig.axes) == 2
    plt.close(fig)
    outlier_panel({"w": w, "a": w.relu()})  # builds and draws once without raising
    plt.close("all")


@pytest.mark.parametrize("x", [torch.tensor([1e-45, -1e-45, 0.0, 3e-45]),  # subnormal: no float32 histogram bins
                               torch.tensor([3e38, -3e38, 1e38, 0.5])])  # near float32's largest value
def test_extreme_ranges_draw_and_report_finite_errors(x):
    from mpqlab.plots import figure_png

    fig, text = render_outlier_grid(x, 3, 0.0)
    assert fig is not None and figure_png(fig).startswith(b"\x89PNG")
    r = outlier_grid(x, 3, 0.0)
    assert r.mse < float("inf") and r.linear_mse < float("inf")  # float64 squares, not float32


def test_panel_shows_bad_data_as_a_red_message(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda *objs: shown.extend(objs))
    outlier_panel({"nan": torch.tensor([0.1, float("nan")])})  # the real render, through the panel's callback
    assert any("NaN" in getattr(obj, "data", "") and "#c0392b" in obj.data for obj in shown)
