"""Panels draw outside pyplot and show a PNG, so a widget callback on another thread never draws blank."""

import matplotlib.pyplot as plt
import pytest
import torch

from mpqlab.plots import figure_png, new_figure
from mpqlab.widgets import output
from mpqlab.widgets.log_grid import render_log_grid
from mpqlab.widgets.lsq_transfer import render_lsq_transfer
from mpqlab.widgets.outlier import render_outlier_grid
from mpqlab.widgets.quantizer_explorer import render_quantizer
from mpqlab.widgets.weighted_entropy_grid import render_weight_grid


@pytest.fixture
def shown(monkeypatch):
    seen = []
    monkeypatch.setattr("IPython.display.display", lambda obj: seen.append(obj))
    return seen


def test_new_figure_is_not_registered_with_pyplot():
    before = plt.get_fignums()
    fig, axes = new_figure(1, 2, figsize=(4, 2))
    assert len(axes) == 2 and plt.get_fignums() == before


def test_figure_png_has_the_drawn_content():
    fig, ax = new_figure(figsize=(2, 2))
    blank = figure_png(fig)
    ax.plot([0, 1], [0, 1], lw=5, color="red")
    drawn = figure_png(fig)
    assert drawn.startswith(b"\x89PNG") and drawn != blank


@pytest.mark.parametrize("render", [
    lambda w: render_quantizer(w, 4, True, False, "minmax")[0],
    lambda w: render_log_grid(w, 4, 0)[0],
    lambda w: render_outlier_grid(w, 4, 0.01)[0],
    lambda w: render_lsq_transfer(3, 0.2)[0],
    lambda w: render_weight_grid(w, 3, "weighted entropy")[0],
])
def test_panel_figures_stay_outside_pyplot(render):
    w = torch.randn(64, 9, generator=torch.Generator().manual_seed(0))
    before = plt.get_fignums()
    fig = render(w)
    assert fig is not None and plt.get_fignums() == before


def test_show_result_prints_text_and_shows_a_png(shown, capsys):
    fig, ax = new_figure(figsize=(2, 2))
    ax.plot([0, 1])
    output.show_result(fig, "summary line")
    assert capsys.readouterr().out == "summary line\n"
    assert len(shown) == 1 and shown[0].data.startswith(b"\x89PNG")


def test_show_result_without_figure_shows_the_error_in_red_escaped(shown, capsys):
    output.show_result(None, "Error: bits must be in [2, 8], got <1>")
    assert capsys.readouterr().out == ""
    assert "color:#c0392b" in shown[0].data and "&lt;1&gt;" in shown[0].data


def test_show_result_passes_a_rendered_png_through(shown, capsys):
    output.show_result(b"\x89PNG fake", "text")
    assert capsys.readouterr().out == "text\n" and shown[0].data == b"\x89PNG fake"
