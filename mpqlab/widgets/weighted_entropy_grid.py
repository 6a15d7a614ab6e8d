"""The weight-grid panel of notebook 03: weighted-entropy levels against equal-population and linear ones.

``weight_grid(w, bits, method)`` is the pure function (tested in ``tests/test_widgets_weighted_entropy_grid.py``).
Every method splits the magnitudes |w| into K = 2^(b-1) clusters, mirrored for the sign (2^b levels), and
scores the split with the objective of Park, Ahn & Yoo (CVPR 2017), importance i = w^2:

    S = - sum_k I_k P_k log P_k,    MSE = mean((w_hat - w)^2)

* "weighted entropy": the clusters that maximise S (``weighted_entropy_levels``), each at its RMS sqrt(I_k);
* "equal population": K clusters of equal size, each at its RMS (``equal_population_levels``);
* "linear": K evenly spaced magnitudes (k + 1/2) * step, step = max|w| / (K - 1/2), so the top level is
  max|w| and there is no zero level, like the other two; |w| goes to the nearest one.

``plot_weight_grid`` draws the histogram of w with the levels, and the gap between neighbouring levels
against |w| (the lesson: weighted-entropy levels are finest at medium magnitudes). ``weight_grid_panel``
only wires a tensor menu, a bits slider and a method toggle to those functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from matplotlib.ticker import FuncFormatter, LogLocator

from mpqlab.errors import MpqlabError, QuantParamError, TensorValueError, check_bits, check_tensor
from mpqlab.plots import new_figure
from mpqlab.quant.weighted_entropy import (equal_population_levels, quantize_to_levels, weighted_entropy,
                                           weighted_entropy_levels)
from mpqlab.widgets.output import show_result

METHODS = ("weighted entropy", "equal population", "linear")
COLORS = {"weighted entropy": "C2", "equal population": "C1", "linear": "C0"}
MAX_BITS = 8  # the clustering's limit (2^7 magnitude clusters)
PLAIN = FuncFormatter(lambda value, _: f"{value:.2g}")


@dataclass
class WeightGridResult:
    """Everything the panel shows for one setting of the controls."""

    bits: int
    method: str
    magnitudes: torch.Tensor  # (K,) the positive levels, increasing (float64)
    thresholds: torch.Tensor  # (K-1,) |w| at or above thresholds[k] goes to magnitudes[k+1] or higher
    w_hat: torch.Tensor  # quantized copy of w (flattened, float64)
    mse: float
    entropy: float  # S of the clusters, importance w^2
    max_abs: float  # max|w|
    sweeps: int | None  # coordinate-ascent sweeps (weighted entropy only)
    converged: bool | None

    @property
    def levels(self) -> torch.Tensor:
        """(2K,) every value the grid outputs: the magnitudes mirrored for the sign."""
        return torch.cat([-self.magnitudes.flip(0), self.magnitudes])

    @property
    def gaps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions, gaps): the gap between neighbouring magnitudes, placed at their midpoint."""
        m = self.magnitudes
        return (m[1:] + m[:-1]) / 2, m[1:] - m[:-1]

    def finest(self) -> str:
        """Where the grid is finest, as the summary prints it."""
        where, gaps = self.gaps
        if gaps.numel() == 0:
            return "finest gap: none (one magnitude)"
        if gaps.numel() == 1:
            return f"finest gap: {float(gaps[0]):.4g}, the only one (two magnitudes)"
        if torch.allclose(gaps, gaps[0].expand_as(gaps)):
            return f"finest gap: {float(gaps[0]):.4g}, the same everywhere"
        i = int(gaps.argmin())
        return (f"finest gap: {float(gaps[i]):.4g} at |w| = {float(where[i]):.4g} "
                f"({float(where[i]) / self.max_abs:.0%} of max|w|)")

    def summary(self) -> str:
        k = self.magnitudes.numel()
        lines = [f"levels: {2 * k} ({k} magnitudes, mirrored)",
                 f"weighted entropy S: {self.entropy:.4e}",
                 f"MSE: {self.mse:.4e}",
                 self.finest()]
        if self.sweeps is not None:
            lines.append(f"coordinate ascent: {self.sweeps} sweeps, "
                         + ("converged" if self.converged else "stopped before converging"))
        return "\n".join(lines)


def linear_magnitudes(top: float, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(magnitudes, thresholds) of the mirrored linear grid up to ``top`` = max|w|:
    (k + 1/2) * step for k = 0 .. K-1, step = top / (K - 1/2), thresholds halfway between levels."""
    k = 2 ** (check_bits(bits, high=MAX_BITS) - 1)
    step = top / (k - 0.5)
    magnitudes = (torch.arange(k, dtype=torch.float64) + 0.5) * step
    return magnitudes, torch.arange(1, k, dtype=torch.float64) * step


def weight_grid(w: torch.Tensor, bits: int, method: str = "weighted entropy") -> WeightGridResult:
    """Quantize ``w`` to 2^bits mirrored levels chosen by ``method`` (one of ``METHODS``) and score them.

    Raises BitWidthError (bits outside 1..8), QuantParamError (unknown method) or TensorValueError (empty,
    NaN/Inf or all-zero w).
    """
    check_tensor(w, name="w")
    bits = check_bits(bits, high=MAX_BITS)
    if method not in METHODS:
        raise QuantParamError(f"method must be one of {list(METHODS)}, got {method!r}")
    w = w.detach().flatten().double()  # (n,)
    top = float(w.abs().max())
    if top == 0:
        raise TensorValueError("w is all zeros: its levels would all be 0; choose another tensor")
    sweeps = converged = None
    if method == "linear":
        magnitudes, thresholds = linear_magnitudes(top, bits)
    else:
        clusters = (weighted_entropy_levels if method == "weighted entropy" else equal_population_levels)(w, bits)
        magnitudes, thresholds = clusters.levels, clusters.thresholds
        if method == "weighted entropy":
            sweeps, converged = clusters.sweeps, clusters.converged
    w_hat = quantize_to_levels(w, magnitudes, thresholds)
    cluster = torch.bucketize(w.abs(), thresholds, right=True)  # (n,) magnitude cluster of every weight
    return WeightGridResult(
        bits=bits, method=method, magnitudes=magnitudes, thresholds=thresholds, w_hat=w_hat,
        mse=float(((w_hat - w) ** 2).mean()), entropy=weighted_entropy(w**2, cluster),
        max_abs=top, sweeps=sweeps, converged=converged,
    )


def plot_weight_grid(result: WeightGridResult, w: torch.Tensor, others: tuple[WeightGridResult, ...] = (),
                     title: str = ""):
    """Left: histogram of w with the levels. Right: gap between neighbouring levels against |w|, log scale,
    with ``others`` (the other methods at the same bits) drawn faintly and the median / 99th percentile of |w|."""
    w = w.detach().flatten().double()
    color = COLORS[result.method]
    fig, (ax_hist, ax_gap) = new_figure(1, 2, figsize=(13, 3.4))
    ax_hist.hist(w.numpy(), bins=200, color="0.75")
    for v in result.levels.tolist():
        ax_hist.axvline(v, color=color, lw=0.8, alpha=0.9)
    ax_hist.set_xlabel("weight w")
    ax_hist.set_ylabel("count")
    name = f"{title}: " if title else ""
    ax_hist.set_title(f"{name}{len(result.levels)} {result.method} levels", fontsize=10)

    for other in others:
        where, gaps = other.gaps
        ax_gap.plot(where.numpy(), gaps.numpy(), marker="o", ms=3, lw=1, color=COLORS[other.method], alpha=0.3,
                    label=other.method)
    where, gaps = result.gaps
    ax_gap.plot(where.numpy(), gaps.numpy(), marker="o", ms=5, lw=2, color=color, label=result.method)
    mags = w.abs().sort().values  # (n,)
    for q, ls, label in ((0.5, "--", "median |w|"), (0.99, ":", "99th percentile of |w|")):
        ax_gap.axvline(float(mags[int(q * (len(mags) - 1))]), color="0.3", ls=ls, lw=1, label=label)
    if gaps.numel():
        ax_gap.set_yscale("log")
        ax_gap.yaxis.set_minor_locator(LogLocator(subs=(2, 5)))  # ticks at 1, 2, 5 per decade
        ax_gap.yaxis.set_major_formatter(PLAIN)  # plain numbers: mathtext labels are slow and hard to read
        ax_gap.yaxis.set_minor_formatter(PLAIN)
    else:  # 1 bit: one magnitude, so no gap to plot (and a log axis over no data cannot be drawn)
        ax_gap.text(0.5, 0.5, "one magnitude: no gaps", transform=ax_gap.transAxes, ha="center", color="0.4")
    ax_gap.set_xlim(0, result.max_abs * 1.02)
    ax_gap.set_xlabel("|w| (midpoint of two neighbouring levels)")
    ax_gap.set_ylabel("gap between levels")
    ax_gap.set_title(f"bits={result.bits}: where is the grid finest?", fontsize=10)
    ax_gap.legend(fontsize=8, frameon=False, loc="lower right")
    fig.tight_layout()
    return fig


def render_weight_grid(w: torch.Tensor, bits: int, method: str, title: str = ""):
    """(figure, summary), or (None, "Error: ...") when the controls or the data are invalid: what the panel shows.

    The other two methods are computed too, at the same bits, for the faint curves of the gap plot.
    """
    try:
        result = weight_grid(w, bits, method)
        others = tuple(weight_grid(w, bits, m) for m in METHODS if m != method)
        return plot_weight_grid(result, w, others, title), result.summary()
    except MpqlabError as err:
        return None, f"Error: {err}"


def weight_grid_panel(tensors: dict, bits: int = 3, method: str = "weighted entropy"):
    """A tensor menu, a bits slider and a method toggle, redrawing ``render_weight_grid`` below them."""
    import ipywidgets as widgets
    from IPython.display import display

    menu = widgets.Dropdown(options=list(tensors), description="tensor")
    bits_slider = widgets.IntSlider(value=bits, min=2, max=6, description="bits", continuous_update=False)
    method_buttons = widgets.ToggleButtons(options=list(METHODS), value=method, description="method")

    def update(name, bits, method):
        fig, text = render_weight_grid(tensors[name], bits, method, title=name)
        show_result(fig, text)

    out = widgets.interactive_output(update, {"name": menu, "bits": bits_slider, "method": method_buttons})
    display(widgets.VBox([widgets.HBox([menu, bits_slider]), method_buttons, out]))
