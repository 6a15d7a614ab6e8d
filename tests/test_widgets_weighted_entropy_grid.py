import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from mpqlab.errors import BitWidthError, QuantParamError, TensorValueError  # noqa: E402
from mpqlab.widgets.weighted_entropy_grid import (  # noqa: E402
    METHODS, linear_magnitudes, plot_weight_grid, render_weight_grid, weight_grid, weight_grid_panel,
)


@pytest.fixture
def w():
    return torch.randn(3000, generator=torch.Generator().manual_seed(0)) * 0.1  # weight-like, bell-shaped


def s_by_hand(w, cluster):
    """S = -sum_k I_k P_k log P_k, importance w^2, written out cluster by cluster."""
    w, s = w.double(), 0.0
    for k in torch.unique(cluster).tolist():
        part = w[cluster == k]
        p = len(part) / len(w)
        s -= float((part**2).mean()) * p * math.log(p)
    return s


def test_two_bit_weighted_entropy_is_the_best_single_split():
    w = torch.tensor([0.02, -0.05, 0.08, -0.11, 0.15, 0.2, -0.26, 0.35, -0.6, 0.9], dtype=torch.float64)
    mags = w.abs().sort().values
    best = max(range(1, 10), key=lambda j: s_by_hand(mags, (torch.arange(10) >= j).long()))
    r = weight_grid(w, 2, "weighted entropy")
    assert r.entropy == pytest.approx(s_by_hand(mags, (torch.arange(10) >= best).long()), rel=1e-12)
    small, large = mags[:best], mags[best:]
    assert torch.allclose(r.magnitudes, torch.stack([small.pow(2).mean().sqrt(), large.pow(2).mean().sqrt()]))
    assert torch.allclose(r.levels, torch.cat([-r.magnitudes.flip(0), r.magnitudes]))
    expected = torch.sign(w) * torch.where(w.abs() >= float(r.thresholds[0]), r.magnitudes[1], r.magnitudes[0])
    assert torch.allclose(r.w_hat, expected)
    assert r.mse == pytest.approx(float((expected - w).pow(2).mean()))
    assert r.summary().splitlines()[0] == "levels: 4 (2 magnitudes, mirrored)"
    assert r.summary().splitlines()[3].endswith("the only one (two magnitudes)")


@pytest.mark.parametrize("method", METHODS)
def test_entropy_mse_and_counts_match_a_direct_computation(w, method):
    r = weight_grid(w, 3, method)
    assert r.magnitudes.numel() == 4 and r.levels.numel() == 8 and r.thresholds.numel() == 3
    cluster = torch.bucketize(w.abs().double(), r.thresholds, right=True)
    assert r.entropy == pytest.approx(s_by_hand(w, cluster), rel=1e-9)
    assert torch.equal(r.w_hat.abs(), r.magnitudes[cluster])  # every weight sits on its cluster's level
    assert r.mse == pytest.approx(float((r.w_hat - w.double()).pow(2).mean()), rel=1e-12)
    lines = r.summary().splitlines()
    assert lines[:3] == ["levels: 8 (4 magnitudes, mirrored)", f"weighted entropy S: {r.entropy:.4e}",
                         f"MSE: {r.mse:.4e}"]


def test_weighted_entropy_maximises_s_and_is_finest_at_medium_magnitudes(w):
    grids = {m: weight_grid(w, 4, m) for m in METHODS}
    assert grids["weighted entropy"].entropy > max(grids["equal population"].entropy, grids["linear"].entropy)
    where, gaps = grids["weighted entropy"].gaps
    i = int(gaps.argmin())
    assert 0 < i < len(gaps) - 1  # the lesson of notebook 03: wide first and last clusters
    median = float(w.abs().median())
    assert median < float(where[i]) < float(w.abs().max()) / 2
    ep_where, ep_gaps = grids["equal population"].gaps
    assert int(ep_gaps.argmin()) <= 1  # equal population is finest where the count is, near zero
    assert "converged" in grids["weighted entropy"].summary() and "sweeps" not in grids["linear"].summary()


def test_linear_grid_is_evenly_spaced_up_to_max_abs(w):
    r = weight_grid(w, 3, "linear")
    top = float(w.abs().max())
    step = top / 3.5
    assert torch.allclose(r.magnitudes, torch.tensor([0.5, 1.5, 2.5, 3.5], dtype=torch.float64) * step)
    assert r.magnitudes[-1].item() == pytest.approx(top)
    assert float((r.w_hat - w.double()).abs().max()) <= step / 2 + 1e-9  # nearest level, never clipped
    assert r.summary().splitlines()[3] == f"finest gap: {step:.4g}, the same everywhere"
    assert torch.allclose(linear_magnitudes(top, 3)[1], torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64) * step)


def test_more_bits_lower_the_error(w):
    for method in METHODS:
        errors = [weight_grid(w, b, method).mse for b in (2, 3, 4, 5)]
        assert all(a > b for a, b in zip(errors, errors[1:])), method


@pytest.mark.parametrize("bits,method,err", [
    (0, "linear", BitWidthError), (9, "weighted entropy", BitWidthError), (2.5, "linear", BitWidthError),
    (3, "k-means", QuantParamError),
])
def test_bad_controls_raise_and_render_as_a_message(w, bits, method, err):
    with pytest.raises(err):
        weight_grid(w, bits, method)
    fig, text = render_weight_grid(w, bits, method)
    assert fig is None and text.startswith("Error: ")


@pytest.mark.parametrize("bad,word", [(torch.tensor([]), "empty"), (torch.tensor([0.1, float("nan")]), "NaN"),
                                      (torch.zeros(10), "all zeros")])
def test_bad_data_raises_and_renders_as_a_message(bad, word):
    for method in METHODS:
        with pytest.raises(TensorValueError):
            weight_grid(bad, 3, method)
    fig, text = render_weight_grid(bad, 3, "weighted entropy")
    assert fig is None and text.startswith("Error: ") and word in text


def test_render_draws_outside_pyplot(w):
    before = plt.get_fignums()
    fig, text = render_weight_grid(w, 3, "equal population", title="w")
    assert fig is not None and len(fig.axes) == 2 and plt.get_fignums() == before
    assert len(fig.axes[1].get_lines()) == 3 + 2  # three methods' gap curves, median and 99th percentile
    assert text == weight_grid(w, 3, "equal population").summary()
    fig = plot_weight_grid(weight_grid(w, 2, "linear"), w)
    assert len(fig.axes) == 2 and plt.get_fignums() == before


def test_panel_wires_the_controls_and_shows_errors_as_text(w, monkeypatch):
    import ipywidgets as widgets

    shown, calls = [], []
    monkeypatch.setattr("IPython.display.display", lambda *objs: shown.extend(objs))

    def fake_render(w_, bits, method, title=""):  # no drawing: this test is about the wiring
        calls.append((title, bits, method))
        return None, "Error: stub"

    monkeypatch.setattr("mpqlab.widgets.weighted_entropy_grid.render_weight_grid", fake_render)
    weight_grid_panel({"a": w, "b": 2 * w}, bits=3)
    box = next(obj for obj in shown if isinstance(obj, widgets.VBox))
    controls = {c.description: c for c in [*box.children[0].children, box.children[1]]}
    assert set(controls) == {"tensor", "bits", "method"}
    assert isinstance(controls["method"], widgets.ToggleButtons) and not controls["bits"].continuous_update
    assert calls[-1] == ("a", 3, "weighted entropy")
    assert any("Error: stub" in getattr(obj, "data", "") for obj in shown)  # the message, not a traceback
    controls["method"].value = "linear"
    controls["bits"].value = 5
    controls["tensor"].value = "b"
    assert calls[-1] == ("b", 5, "linear")


def test_panel_builds_and_draws_headless(w):
    before = plt.get_fignums()
    weight_grid_panel({"w": w})  # builds and draws once without raising
    assert plt.get_fignums() == before


@pytest.mark.parametrize("method", METHODS)
def test_one_bit_has_one_magnitude_and_still_draws(method):
    """One magnitude means no gaps: the log-scaled gap axis used to raise while the figure was drawn."""
    from mpqlab.plots import figure_png

    w = torch.randn(9, generator=torch.Generator().manual_seed(0))
    fig, text = render_weight_grid(w, 1, method)
    assert fig is not None and "finest gap: none (one magnitude)" in text
    assert figure_png(fig).startswith(b"\x89PNG")


def test_panel_shows_bad_data_as_a_red_message(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda *objs: shown.extend(objs))
    weight_grid_panel({"zeros": torch.zeros(10)})  # the real render_weight_grid, through the panel's callback
    assert any("all zeros" in getattr(obj, "data", "") and "#c0392b" in obj.data for obj in shown)
