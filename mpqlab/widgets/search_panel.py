"""The LIMPQ search panel of notebook 10: budgets and bit options in, an optimal policy out, redrawn live.

``search_state(indicators, bitops_budget, size_budget_bits, bit_options, alpha)`` is the pure
function (tested in ``tests/test_widgets_search_panel.py``): it solves LIMPQ's ILP with
``mpqlab.limpq.search.solve_policy`` and summarises the policy in one line,

    BitOps: 12.34 M (budget 13.00 M), avg w_bits: 3.42, avg a_bits: 3.96, size: 0.123 MB, objective: 1.2345

where BitOps count the searchable layers (like the budget), ``avg`` is the plain mean over the
searchable layers and size counts every layer's weights. ``plot_policy`` draws per-layer bars of
w_bits and a_bits, depthwise and pointwise in their colours. ``search_panel`` only wires sliders,
check boxes and a model drop-down to those two and shows an ``MpqlabError`` (an infeasible budget, no
bit-width ticked) as a red message; ``slider_settings`` (pure, tested) puts each model's start budgets on
the sliders' grids, and ``compare_with_published`` says whether a policy equals one a paper printed.
``pareto_plot`` draws accuracy against BitOps for the fine-tuned policies.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from matplotlib.patches import Rectangle

from mpqlab.errors import MpqlabError, PolicyError, QuantParamError
from mpqlab.limpq.indicators import Indicators, check_indicators
from mpqlab.limpq.search import SearchResult, min_bitops, min_size_bits, solve_policy, uniform_budget
from mpqlab.plots import KIND_COLORS, new_figure, show_figure
from mpqlab.widgets.output import show_error, show_result


def total_macs(indicators: Indicators) -> int:
    """sum_l macs_l over the searchable layers."""
    return sum(indicators.layer_macs[n] for n in indicators.layer_names)


def equivalent_bits(indicators: Indicators, bitops: float) -> float:
    """The uniform bit-width b with the same BitOps: b^2 * sum_l macs_l = bitops, b = sqrt(bitops / MACs)."""
    return math.sqrt(bitops / total_macs(indicators))


@dataclass
class SearchState:
    """One solve of the panel: the result and the summary lines it prints."""

    result: SearchResult
    bitops_budget: float | None  # None: no BitOps budget
    bit_options: list[int]

    @property
    def bits_used(self) -> list[int]:
        """Distinct bit-widths (weights or activations) in the searched layers' policy."""
        return sorted(set(self.result.weight_bits) | set(self.result.act_bits))

    def summary(self, unit: float = 1e6, unit_name: str = "M") -> str:
        r = self.result
        n = len(r.layer_names)
        budget = "none" if self.bitops_budget is None else f"{self.bitops_budget / unit:.2f} {unit_name}"
        return (f"BitOps: {r.bitops / unit:.2f} {unit_name} (budget {budget}), "
                f"avg w_bits: {sum(r.weight_bits) / n:.2f}, avg a_bits: {sum(r.act_bits) / n:.2f}, "
                f"size: {r.size_bits / 8 / 1e6:.3f} MB, objective: {r.objective:.4f}\n"
                f"bit-widths in policy: {self.bits_used}")


def search_state(indicators: Indicators, bitops_budget: float | None, size_budget_bits: float | None,
                 bit_options, alpha: float = 2.0) -> SearchState:
    """Solve the ILP for the panel's settings; raises BitWidthError / InfeasibleBudgetError / QuantParamError."""
    result = solve_policy(indicators, bit_options, bitops_budget, size_budget_bits, alpha)
    return SearchState(result, bitops_budget, sorted(set(bit_options)))


def plot_policy(result: SearchResult, kinds: dict[str, str], title: str = ""):
    """Two bar charts over the searchable layers: w_bits and a_bits, coloured by layer kind (None: all "conv")."""
    kinds = {} if kinds is None else kinds
    if not isinstance(kinds, dict):
        raise QuantParamError(f"kinds must be a dict {{layer: kind}} (kinds: {list(KIND_COLORS)}), "
                              f"got {type(kinds).__name__}")
    fig, axes = new_figure(1, 2, figsize=(13, 2.8), sharey=True)
    colors = [KIND_COLORS.get(kinds.get(n, "conv"), "0.5") for n in result.layer_names]
    labels = [n.replace(".conv", "") for n in result.layer_names]
    for ax, bits, side in zip(axes, (result.weight_bits, result.act_bits), ("weight bits", "activation bits")):
        ax.bar(range(len(bits)), bits, color=colors)
        ax.set_xticks(range(len(bits)))
        ax.set_xticklabels(labels, rotation=90, fontsize=6)
        ax.set_yticks(range(0, 9))
        ax.set_ylim(0, 7)
        ax.set_title(f"{title}{side}", fontsize=10)
    present = [k for k in KIND_COLORS if k in set(kinds.get(n, "conv") for n in result.layer_names)]
    axes[0].legend([Rectangle((0, 0), 1, 1, color=KIND_COLORS[k]) for k in present], present,
                   fontsize=7, frameon=False, loc="upper right", ncol=len(present))
    # Fixed margins instead of tight_layout, which lays out every label once more (about a quarter of
    # a panel update, benchmarks/bench_search.py).
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.24, top=0.9, wspace=0.04)
    return fig


class PolicyChart:
    """``plot_policy``'s figure kept across panel updates, redrawn by blitting.

    Only the bar heights change from one policy to the next. Drawing the whole figure again lays out
    its ~60 layer labels every time (most of a 0.3-0.7 s update); instead the chart draws the axes,
    labels and legend once into a saved background, and each update pastes that background back and
    draws just the bars on top (matplotlib's blitting), which keeps an update well under 0.2 s.
    """

    def __init__(self, fig, layer_names):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        self.fig, self.layer_names = fig, list(layer_names)
        self.bars = [list(ax.containers[0]) for ax in fig.axes]
        for bar in (b for bars in self.bars for b in bars):
            bar.set_animated(True)  # left out of the background, drawn per update
        self.canvas = FigureCanvasAgg(fig)
        self.canvas.draw()
        self.background = self.canvas.copy_from_bbox(fig.bbox)

    @classmethod
    def draw(cls, result: SearchResult, kinds: dict[str, str], title: str = "") -> "PolicyChart":
        return cls(plot_policy(result, kinds, title), result.layer_names)

    def update(self, result: SearchResult):
        """The same figure with the bars of ``result`` (a policy over the same layers)."""
        if list(result.layer_names) != self.layer_names:
            raise PolicyError(f"this chart shows the layers {self.layer_names[:3]}...; "
                              f"got a policy over {list(result.layer_names)[:3]}...")
        for bars, bits in zip(self.bars, (result.weight_bits, result.act_bits)):
            for bar, b in zip(bars, bits):
                bar.set_height(b)
        return self.fig

    def png(self) -> bytes:
        """The chart as PNG bytes: the saved background plus the current bars."""
        from PIL import Image

        self.canvas.restore_region(self.background)
        for ax, bars in zip(self.fig.axes, self.bars):
            for bar in bars:
                ax.draw_artist(bar)
        buffer = io.BytesIO()
        Image.frombuffer("RGBA", self.canvas.get_width_height(), self.canvas.buffer_rgba()).save(buffer, "png")
        return buffer.getvalue()


def render_search(indicators: Indicators, kinds: dict[str, str], bitops_budget: float,
                  size_budget_bits: float | None, bit_options, alpha: float = 2.0,
                  chart: PolicyChart | None = None):
    """(state, figure, text), or (None, None, "Error: ...") when the settings have no solution.

    With ``chart``, the policy is drawn into that kept figure instead of a new one."""
    try:
        state = search_state(indicators, bitops_budget, size_budget_bits, bit_options, alpha)
        bits = equivalent_bits(indicators, state.result.bitops)
        fig = plot_policy(state.result, kinds) if chart is None else chart.update(state.result)  # may be PolicyError
        return state, fig, f"{state.summary()}\nequivalent uniform bit-width: {bits:.2f}"
    except MpqlabError as err:
        return None, None, f"Error: {err}"


def slider_ranges(indicators: Indicators, bit_options=(2, 3, 4, 5, 6)) -> dict:
    """(min, max) of the BitOps slider in M and of the size slider in MB, for the full set of options."""
    indicators = check_indicators(indicators, where="indicators of the search panel")
    options = sorted(bit_options)
    top = uniform_budget(indicators, options[-1], options[-1])
    full_size = (indicators.total_params() * options[-1]
                 + sum(f.params * (f.w_bits - options[-1]) for f in indicators.fixed_layers.values()))
    return {"bitops_m": (min_bitops(indicators, options) / 1e6, top / 1e6),
            "size_mb": (min_size_bits(indicators, options) / 8e6, full_size / 8e6)}


@dataclass(frozen=True)
class PanelModel:
    """One network the panel can search: its indicators and the settings the panel starts at."""

    indicators: Indicators
    kinds: dict[str, str]  # {layer: kind} for the bar colours ({} draws every layer as "conv")
    bitops_budget: float  # start of the BitOps slider, in BitOps over the searchable layers
    size_budget_bits: float | None = None  # start of the size slider; None: its maximum (no size limit)
    bit_options: tuple = (2, 3, 4, 5, 6)  # the ticked bit-widths at the start
    alpha: float = 2.0
    published: tuple[list[int], list[int]] | None = None  # (weight_bits, act_bits) a paper printed


def _step(width: float) -> float:
    """A power of ten, about a hundredth of ``width``: a slider's step over that range."""
    return 10.0 ** math.floor(math.log10(max(width / 100, 1e-6)))


def _grid(lo: float, hi: float, start: float, step: float) -> dict:
    """A slider over about [lo, hi] whose grid of ``step`` passes exactly through ``start``.

    The slider's ends move inwards to the nearest grid points, so ``start`` (a recipe's budget) is
    a value the slider can show and return unchanged, however coarse the step.
    """
    start = min(max(start, lo), hi)
    below, above = math.floor((start - lo) / step + 1e-9), math.floor((hi - start) / step + 1e-9)
    return {"min": start - below * step, "max": start + above * step, "step": step, "value": start}


def slider_settings(model: PanelModel, bit_options=(2, 3, 4, 5, 6)) -> dict:
    """min, max, step and value of the BitOps slider (M BitOps) and the size slider (MB) for ``model``.

    About 100 steps over the reachable range; each slider's grid goes through the model's start value.
    """
    ranges = slider_ranges(model.indicators, bit_options)
    lo, hi = ranges["bitops_m"]
    s_lo, s_hi = ranges["size_mb"]
    size_mb = s_hi if model.size_budget_bits is None else model.size_budget_bits / 8e6
    return {"bitops_m": _grid(lo, hi, model.bitops_budget / 1e6, _step(hi - lo)),
            "size_mb": _grid(s_lo, s_hi, size_mb, _step(s_hi - s_lo))}


def compare_with_published(result: SearchResult, published) -> str:
    """One line: does the searched policy equal the published one, layer by layer?"""
    weight_bits, act_bits = published
    if len(weight_bits) != len(result.weight_bits) or len(act_bits) != len(result.act_bits):
        raise PolicyError(f"the published policy has {len(weight_bits)} layers, the search {len(result.weight_bits)}")
    differ = sum(a != b for a, b in zip(list(weight_bits) + list(act_bits), result.weight_bits + result.act_bits))
    if differ == 0:
        return "published policy: reproduced (every weight and activation bit-width equal)"
    return f"published policy: differs in {differ} of {2 * len(weight_bits)} bit-widths"


def search_panel(indicators: Indicators, kinds: dict[str, str], bit_options=(2, 3, 4, 5, 6),
                 start_bits: int = 4, alpha: float = 2.0, on_result=None,
                 models: dict[str, PanelModel] | None = None):
    """BitOps and size sliders, one check box per bit-width and an alpha slider, redrawing the policy.

    ``models`` (optional, ``{label: PanelModel or None}``) adds a "model" drop-down; None stands for
    ``indicators`` and ``kinds`` at the BitOps of uniform W{start_bits}A{start_bits}. The panel starts
    with the first entry; choosing another moves every control to that model's start settings.
    ``on_result(state)`` (optional) receives every successful solve, e.g. to fine-tune it later.
    Returns the widgets in a VBox (also displayed).
    """
    import ipywidgets as widgets
    from IPython.display import display

    indicators = check_indicators(indicators, where="indicators of the search panel")
    first = PanelModel(indicators, kinds, uniform_budget(indicators, start_bits, start_bits),
                       bit_options=tuple(bit_options), alpha=alpha)
    choices = {label: (first if model is None else model) for label, model in (models or {"this model": None}).items()}
    label = next(iter(choices))
    settings = slider_settings(choices[label], bit_options)
    wide = {"description_width": "initial"}
    bitops_slider = widgets.FloatSlider(**settings["bitops_m"], description="BitOps budget", readout_format=".1f",
                                        continuous_update=False, style=wide, layout={"width": "420px"})
    bitops_unit = widgets.Label()
    size_slider = widgets.FloatSlider(**settings["size_mb"], description="size budget", readout_format=".3f",
                                      continuous_update=False, style=wide, layout={"width": "420px"})
    alpha_slider = widgets.FloatSlider(value=choices[label].alpha, min=0.0, max=5.0, step=0.1, description="alpha",
                                       continuous_update=False)
    boxes = {b: widgets.Checkbox(value=b in choices[label].bit_options, description=f"{b} bits", indent=False,
                                 layout={"width": "70px"}) for b in sorted(bit_options)}
    model_menu = widgets.Dropdown(options=list(choices), value=label, description="model",
                                  layout={"width": "300px", "display": None if models else "none"})
    out = widgets.Output()
    charts = {}  # one PolicyChart per model, made at its first successful solve
    switching = {"now": False}  # while a model switch moves the controls: one solve at the end, not one per control

    def update(*_):
        if switching["now"]:
            return
        model = choices[model_menu.value]
        budget_m, size_mb = bitops_slider.value, size_slider.value
        bitops_unit.value = (f"M BitOps (= uniform {equivalent_bits(model.indicators, budget_m * 1e6):.2f} bits); "
                             "size in MB")
        options = [b for b in sorted(bit_options) if boxes[b].value]
        state, fig, text = render_search(model.indicators, model.kinds, budget_m * 1e6, size_mb * 8e6, options,
                                         alpha_slider.value, chart=charts.get(model_menu.value))
        with out:
            out.clear_output(wait=True)
            if state is None:
                show_error(text)
                return
            if model_menu.value not in charts:  # the first solve: keep the figure render_search has just drawn
                charts[model_menu.value] = PolicyChart(fig, state.result.layer_names)
            if model.published is not None:
                try:
                    text += "\n" + compare_with_published(state.result, model.published)
                except MpqlabError as err:  # a PanelModel whose published policy has other layers
                    text += f"\nError: {err}"
            if on_result is not None:
                on_result(state)
            show_result(charts[model_menu.value].png(), text)

    def switch_model(_):
        model = choices[model_menu.value]
        new = slider_settings(model, bit_options)
        switching["now"] = True
        try:
            for slider, values in ((bitops_slider, new["bitops_m"]), (size_slider, new["size_mb"])):
                # One message to the browser with min, max, step and value together (hold_sync): sent one by
                # one, the browser's slider clamps the new value into the old range and sends that back. In the
                # kernel, min, max and value are checked together at the end (hold_trait_notifications).
                with slider.hold_sync(), slider.hold_trait_notifications():
                    slider.min, slider.max, slider.step, slider.value = (values["min"], values["max"],
                                                                         values["step"], values["value"])
            alpha_slider.value = model.alpha
            for b, box in boxes.items():
                box.value = b in model.bit_options
        finally:
            switching["now"] = False
        update()

    for control in [bitops_slider, size_slider, alpha_slider, *boxes.values()]:
        control.observe(update, names="value")
    model_menu.observe(switch_model, names="value")
    update()
    panel = widgets.VBox([widgets.HBox([model_menu, bitops_slider, bitops_unit]),
                          widgets.HBox([size_slider, alpha_slider]), widgets.HBox(list(boxes.values())), out])
    display(panel)
    return panel


def pareto_plot(points, ax=None, title: str = "accuracy vs BitOps"):
    """Accuracy against BitOps (M), one marker per method and budget at the mean over seeds, error bars +- 1 sd.

    ``points`` is a list of dicts with keys ``method`` (legend group), ``bitops``, ``accuracy`` and
    optionally ``budget_bits`` (points of one method and budget are averaged; without it each point
    stands alone) and ``label`` (annotated). ``float`` points (``bitops`` None) are drawn as a band:
    mean +- 1 sd over their seeds.
    """
    import numpy as np

    if ax is None:
        _, ax = new_figure(figsize=(7, 4))
    styles = {"uniform": ("s", "0.3"), "random": ("x", "0.6"), "limpq": ("o", "C3"), "limpq_init": ("v", "C1"),
              "hessian": ("^", "C0"), "live": ("*", "C2"), "float": ("", "0.5")}
    for method in dict.fromkeys(p["method"] for p in points):
        group = [p for p in points if p["method"] == method]
        marker, color = styles.get(method, ("D", "C4"))
        if method == "float" or all(p.get("bitops") is None for p in group):
            accs = np.array([100 * p["accuracy"] for p in group])
            ax.axhline(accs.mean(), color=color, ls="--", lw=1, label=f"{method} (mean of {len(accs)})")
            if len(accs) > 1:
                ax.axhspan(accs.mean() - accs.std(ddof=1), accs.mean() + accs.std(ddof=1), color=color, alpha=0.15)
            continue
        cells: dict = {}
        for i, p in enumerate(group):
            cells.setdefault(p.get("budget_bits", ("alone", i)), []).append(p)
        rows = []
        for cell in cells.values():
            accs = np.array([100 * p["accuracy"] for p in cell])
            rows.append((np.mean([p["bitops"] for p in cell]) / 1e6, accs.mean(),
                         accs.std(ddof=1) if len(accs) > 1 else 0.0, cell[0].get("label")))
        rows.sort()
        xs, ys, sds = [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
        ax.errorbar(xs, ys, yerr=sds, marker=marker, color=color, capsize=3,
                    ls="-" if method in ("uniform", "limpq", "limpq_init", "hessian") else "none",
                    ms=9 if method == "live" else 6, label=method)
        for x, y, _, label in rows:
            if label:
                ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("BitOps of the searchable layers (M)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    ax.figure.tight_layout()
    return ax.figure


def finetune_button(latest: dict, finetune, points: list, description: str = "fine-tune this policy"):
    """A button that fine-tunes ``latest["state"]`` (the panel's last solve) and redraws the Pareto plot.

    ``finetune(policy) -> accuracy`` does the work (its tqdm bar is the progress bar); the new point is
    appended to ``points`` as method "live". Errors are shown as a red message.
    """
    import ipywidgets as widgets
    from IPython.display import display

    button = widgets.Button(description=description, button_style="primary", layout={"width": "220px"})
    out = widgets.Output()

    def on_click(_):
        with out:
            out.clear_output()
            state = latest.get("state")
            if state is None:
                show_error("Error: no feasible policy in the panel yet")
                return
            try:
                accuracy = finetune(state.result.policy)
            except MpqlabError as err:
                show_error(f"Error: {err}")
                return
            points.append({"method": "live", "bitops": state.result.bitops, "accuracy": accuracy,
                           "label": f"{state.result.bitops / 1e6:.1f} M"})
            print(f"fine-tuned policy: BitOps {state.result.bitops / 1e6:.2f} M, accuracy {100 * accuracy:.2f}%")
            show_figure(pareto_plot(points))

    button.on_click(on_click)
    display(widgets.VBox([button, out]))
    return button
