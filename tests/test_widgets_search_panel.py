"""The LIMPQ search panel: the pure solve-and-summarise function, its error path, and the wiring."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from mpqlab.limpq.indicators import synthetic_indicators  # noqa: E402
from mpqlab.limpq.search import min_bitops, solve_policy, uniform_budget  # noqa: E402
from mpqlab.widgets.search_panel import (  # noqa: E402
    PolicyChart, equivalent_bits, pareto_plot, render_search, search_panel, search_state, slider_ranges,
)
from mpqlab.errors import PolicyError  # noqa: E402

OPTIONS = [2, 3, 4, 5, 6]
SUMMARY = re.compile(r"^BitOps: \d+\.\d\d M \(budget \d+\.\d\d M\), avg w_bits: \d\.\d\d, avg a_bits: \d\.\d\d, "
                     r"size: \d+\.\d\d\d MB, objective: -?\d+\.\d\d\d\d$")


@pytest.fixture(scope="module")
def ind():
    return synthetic_indicators(12, OPTIONS, seed=3)


@pytest.fixture(scope="module")
def kinds(ind):
    return {n: ("depthwise" if i % 2 else "pointwise") for i, n in enumerate(ind.layer_names)}


def test_summary_lines_have_the_documented_format(ind):
    state = search_state(ind, uniform_budget(ind, 4, 4), None, OPTIONS)
    first, second = state.summary().splitlines()
    assert SUMMARY.match(first), first
    assert second == f"bit-widths in policy: {state.bits_used}"
    r = state.result
    assert f"avg w_bits: {sum(r.weight_bits) / len(r.weight_bits):.2f}" in first
    assert f"BitOps: {r.bitops / 1e6:.2f} M" in first


def test_state_is_the_ilp_optimum_and_lower_budgets_cost_less(ind):
    high = search_state(ind, uniform_budget(ind, 5, 5), None, OPTIONS)
    low = search_state(ind, uniform_budget(ind, 3, 3), None, OPTIONS)
    assert high.result.objective == solve_policy(ind, OPTIONS, uniform_budget(ind, 5, 5)).objective
    assert low.result.bitops <= uniform_budget(ind, 3, 3) < high.result.bitops
    assert low.result.objective > high.result.objective  # less budget can only cost importance


def test_unticked_bit_width_disappears_from_the_policy(ind):
    state = search_state(ind, uniform_budget(ind, 4, 4), None, [2, 3, 4, 5])
    assert 6 not in state.bits_used
    assert set(state.result.weight_bits) | set(state.result.act_bits) <= {2, 3, 4, 5}


def test_size_budget_is_respected(ind):
    free = search_state(ind, uniform_budget(ind, 5, 5), None, OPTIONS).result
    state = search_state(ind, uniform_budget(ind, 5, 5), free.size_bits * 0.8, OPTIONS)
    assert state.result.size_bits <= free.size_bits * 0.8


def test_errors_become_a_message_not_an_exception(ind, kinds):
    state, fig, text = render_search(ind, kinds, min_bitops(ind, OPTIONS) - 1, None, OPTIONS)
    assert state is None and fig is None and text.startswith("Error:") and "below" in text
    state, fig, text = render_search(ind, kinds, uniform_budget(ind, 4, 4), None, [])
    assert state is None and text.startswith("Error:") and "empty" in text
    state, fig, text = render_search(ind, kinds, uniform_budget(ind, 4, 4), None, OPTIONS, alpha=-1)
    assert state is None and "alpha" in text


def test_panel_solve_prints_nothing_on_the_process_stdout(capfd):
    """The HiGHS banner, printed from C on fd 1 once per process, would land in the notebook's log above
    the panel's text: a fresh child process runs the panel's functions and writes to capfd's fd 1."""
    code = ("import matplotlib; matplotlib.use('Agg')\n"
            "from mpqlab.limpq.indicators import synthetic_indicators as s\n"
            "from mpqlab.limpq.search import uniform_budget\n"
            "from mpqlab.widgets.search_panel import render_search, search_state\n"
            "ind = s(12, [2, 3, 4, 5, 6], seed=3)\n"
            "assert search_state(ind, uniform_budget(ind, 4, 4), None, [2, 3, 4, 5, 6]).result.status == 'Optimal'\n"
            "state, _, _ = render_search(ind, {}, uniform_budget(ind, 3, 4), 1e9, [2, 3, 4, 5, 6])\n"
            "assert state is not None\n")
    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo, timeout=120,
                   env={**os.environ, "PYTHONPATH": str(repo)})
    assert capfd.readouterr() == ("", "")


def test_render_draws_two_bar_charts_and_reports_equivalent_bits(ind, kinds):
    state, fig, text = render_search(ind, kinds, uniform_budget(ind, 4, 4), None, OPTIONS)
    assert len(fig.axes) == 2 and len(fig.axes[0].patches) == len(ind.layer_names)
    assert text.splitlines()[-1] == f"equivalent uniform bit-width: {equivalent_bits(ind, state.result.bitops):.2f}"
    plt.close(fig)
    assert equivalent_bits(ind, uniform_budget(ind, 3, 3)) == pytest.approx(3.0)


def test_slider_ranges_span_the_reachable_budgets(ind):
    r = slider_ranges(ind, OPTIONS)
    assert r["bitops_m"] == (min_bitops(ind, OPTIONS) / 1e6, uniform_budget(ind, 6, 6) / 1e6)
    assert r["size_mb"][0] < r["size_mb"][1]


def test_pareto_plot_groups_by_method():
    points = [{"method": "uniform", "bitops": 3e7, "accuracy": 0.8}, {"method": "uniform", "bitops": 5e7, "accuracy": 0.9},
              {"method": "limpq", "bitops": 3e7, "accuracy": 0.85, "label": "W3A3"}]
    fig = pareto_plot(points)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["uniform", "limpq"]
    plt.close(fig)


def test_panel_wires_every_control_and_shows_errors_in_red(ind, kinds, monkeypatch):

    shown, calls = [], []
    monkeypatch.setattr("IPython.display.display", lambda *objs: shown.extend(objs))

    def fake_render(ind_, kinds_, budget, size, options, alpha, chart=None):  # no solving: this test is about the wiring
        calls.append((budget, size, options, alpha))
        return None, None, "Error: stub"

    monkeypatch.setattr("mpqlab.widgets.search_panel.render_search", fake_render)
    panel = search_panel(ind, kinds, OPTIONS)
    controls = {c.description: c for row in panel.children[:3] for c in row.children if hasattr(c, "description")}
    assert {"BitOps budget", "size budget", "alpha", "2 bits", "6 bits"} <= set(controls)
    assert calls[-1][0] == pytest.approx(uniform_budget(ind, 4, 4), rel=1e-9) and calls[-1][2] == OPTIONS
    assert any("Error: stub" in getattr(obj, "data", "") and "color" in obj.data for obj in shown)
    controls["6 bits"].value = False
    assert calls[-1][2] == [2, 3, 4, 5]
    controls["alpha"].value = 1.0
    assert calls[-1][3] == 1.0
    controls["BitOps budget"].value = controls["BitOps budget"].min
    assert calls[-1][0] == pytest.approx(controls["BitOps budget"].min * 1e6)


def test_kept_chart_shows_each_new_policy_like_a_fresh_figure(ind, kinds):
    first = search_state(ind, uniform_budget(ind, 5, 5), None, OPTIONS).result
    chart = PolicyChart.draw(first, kinds)
    state, fig, _ = render_search(ind, kinds, uniform_budget(ind, 3, 3), None, OPTIONS, chart=chart)
    assert fig is chart.fig
    heights = [[bar.get_height() for bar in ax.containers[0]] for ax in fig.axes]
    assert heights == [list(state.result.weight_bits), list(state.result.act_bits)]
    assert heights[0] != list(first.weight_bits)  # the lower budget did change the bars


def test_kept_chart_refuses_a_policy_over_other_layers(ind, kinds):
    chart = PolicyChart.draw(search_state(ind, uniform_budget(ind, 4, 4), None, OPTIONS).result, kinds)
    other = synthetic_indicators(5, OPTIONS, seed=1)
    with pytest.raises(PolicyError, match="this chart shows the layers"):
        chart.update(search_state(other, uniform_budget(other, 4, 4), None, OPTIONS).result)


def test_blitted_png_follows_the_policy(ind, kinds):
    chart = PolicyChart.draw(search_state(ind, uniform_budget(ind, 5, 5), None, OPTIONS).result, kinds)
    high = chart.png()
    render_search(ind, kinds, uniform_budget(ind, 3, 3), None, OPTIONS, chart=chart)
    low = chart.png()
    render_search(ind, kinds, uniform_budget(ind, 5, 5), None, OPTIONS, chart=chart)
    assert high.startswith(b"\x89PNG") and low != high
    assert chart.png() == high  # back to the first policy: the old, taller bars leave no trace


def test_bad_panel_inputs_become_messages(ind, kinds):
    budget = uniform_budget(ind, 4, 4)
    for args, text in [((ind, [1], budget, None, OPTIONS), "kinds must be a dict"),
                       ((ind, kinds, budget, None, None), "bit_options must be a list"),
                       ((ind, kinds, budget, None, OPTIONS, 1e308), "overflows"),
                       (({"layer_names": []}, kinds, budget, None, OPTIONS), "expected an Indicators object")]:
        state, fig, message = render_search(*args)
        assert state is None and fig is None and message.startswith("Error: ") and text in message


def test_a_kept_chart_of_other_layers_is_a_message_not_an_exception(ind, kinds):
    """PolicyChart.update's PolicyError was raised outside render_search's try."""
    other = synthetic_indicators(5, OPTIONS, seed=3)
    _, fig, _ = render_search(other, {}, uniform_budget(other, 4, 4), None, OPTIONS)
    chart = PolicyChart(fig, other.layer_names)
    state, fig, text = render_search(ind, kinds, uniform_budget(ind, 4, 4), None, OPTIONS, chart=chart)
    assert state is None and "this chart shows the layers" in text


def test_summary_without_a_bitops_budget():
    ind = synthetic_indicators(6, OPTIONS, seed=1)
    state = search_state(ind, None, None, OPTIONS)
    assert "(budget none)" in state.summary()


def test_panel_shows_bad_kinds_as_a_red_message(ind, monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda *objs: shown.extend(objs))
    search_panel(ind, [1])  # the real render_search, through the panel's callback
    assert any("kinds must be a dict" in getattr(obj, "data", "") and "#c0392b" in obj.data for obj in shown)


# --- the model drop-down and the published ResNet-50 policy ----------------------------------------

from mpqlab.data import repo_data_dir  # noqa: E402
from mpqlab.limpq.indicators import load_indicators  # noqa: E402
from mpqlab.widgets.search_panel import PanelModel, compare_with_published, slider_settings  # noqa: E402

PAPER_FILE = repo_data_dir() / "results" / "limpq_resnet50_paper.json"


@pytest.fixture(scope="module")
def paper_model():
    from mpqlab.experiments.convert_limpq_resnet50 import PAPER, paper_budgets

    ind = load_indicators(PAPER_FILE)
    expected = json.loads(PAPER_FILE.read_text())["expected"]
    bitops, size = paper_budgets(ind)
    return PanelModel(ind, {}, bitops, size, tuple(PAPER.bit_options), PAPER.alpha,
                      (expected["weight_bits"], expected["act_bits"]))


def test_slider_grids_pass_through_the_start_budgets(ind, paper_model):
    for model in (PanelModel(ind, {}, uniform_budget(ind, 4, 4)), paper_model,
                  PanelModel(ind, {}, uniform_budget(ind, 3, 3), size_budget_bits=slider_ranges(ind)["size_mb"][0] * 8e6)):
        settings = slider_settings(model)
        lo, hi = slider_ranges(model.indicators)["bitops_m"]
        for key, start in (("bitops_m", model.bitops_budget / 1e6),
                           ("size_mb", None if model.size_budget_bits is None else model.size_budget_bits / 8e6)):
            s = settings[key]
            assert s["min"] <= s["value"] <= s["max"]
            if start is not None:
                assert s["value"] == start  # exactly: the recipe's budget is what the slider returns
            for end in ("min", "max"):  # the grid through the start reaches both ends
                steps = (s["value"] - s[end]) / s["step"]
                assert steps == pytest.approx(round(steps), abs=1e-6)
        assert lo <= settings["bitops_m"]["min"] < settings["bitops_m"]["max"] <= hi
        assert settings["bitops_m"]["max"] - settings["bitops_m"]["min"] >= 50 * settings["bitops_m"]["step"]


def test_sliders_at_the_paper_settings_reproduce_the_published_policy(paper_model):
    settings = slider_settings(paper_model)
    state = search_state(paper_model.indicators, settings["bitops_m"]["value"] * 1e6,
                         settings["size_mb"]["value"] * 8e6, list(paper_model.bit_options), paper_model.alpha)
    assert compare_with_published(state.result, paper_model.published).startswith("published policy: reproduced")
    assert round(state.result.objective, 7) == 4.6174392


def test_compare_with_published_counts_the_differences(paper_model):
    state = search_state(paper_model.indicators, uniform_budget(paper_model.indicators, 4, 4), None,
                         list(paper_model.bit_options))
    text = compare_with_published(state.result, paper_model.published)
    assert re.fullmatch(r"published policy: differs in \d+ of 104 bit-widths", text)
    with pytest.raises(PolicyError, match="3 layers"):
        compare_with_published(state.result, ([2, 2, 2], [2, 2, 2]))


def test_model_drop_down_moves_every_control_and_solves_once(ind, kinds, paper_model, monkeypatch, capsys):
    shown, calls = [], []
    monkeypatch.setattr("IPython.display.display", lambda *objs: shown.extend(objs))
    real = render_search

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr("mpqlab.widgets.search_panel.render_search", counting)
    panel = search_panel(ind, kinds, OPTIONS, models={"small": None, "ResNet-50 (paper)": paper_model})
    controls = {c.description: c for row in panel.children[:3] for c in row.children if hasattr(c, "description")}
    assert controls["model"].options == ("small", "ResNet-50 (paper)") and len(calls) == 1
    controls["6 bits"].value = False
    capsys.readouterr()
    before = len(calls)
    controls["model"].value = "ResNet-50 (paper)"
    assert len(calls) == before + 1  # one solve for the switch, not one per moved control
    assert controls["6 bits"].value and controls["alpha"].value == 2.0
    assert controls["BitOps budget"].value * 1e6 == pytest.approx(paper_model.bitops_budget, rel=1e-12)
    printed = capsys.readouterr().out
    assert "published policy: reproduced" in printed and "objective: 4.6174" in printed
    controls["model"].value = "small"  # back: the small model's own chart, no PolicyError
    assert "BitOps:" in capsys.readouterr().out


def test_pareto_plot_averages_seeds_with_error_bars_and_draws_float_as_a_band():
    points = [{"method": "uniform", "budget_bits": 3, "seed": s, "bitops": 3e7, "accuracy": a}
              for s, a in enumerate((0.80, 0.82, 0.84))]
    points += [{"method": "float", "budget_bits": 32, "seed": s, "bitops": None, "accuracy": a}
               for s, a in enumerate((0.90, 0.92))]
    fig = pareto_plot(points)
    ax = fig.axes[0]
    line = ax.lines[0]  # the uniform marker: one point at the mean of the three seeds
    assert list(line.get_ydata()) == pytest.approx([82.0])
    bars = [c for c in ax.collections if c.get_segments()]
    assert bars and bars[0].get_segments()[0][:, 1] == pytest.approx([80.0, 84.0])  # +- 1 sd = 2 points
    assert any(abs(h.get_ydata()[0] - 91.0) < 1e-9 for h in ax.lines[1:])  # the float mean line
    plt.close(fig)
