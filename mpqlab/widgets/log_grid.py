"""The log-grid panel of notebook 02: log-quantization levels drawn over a real weight histogram.

``log_grid(w, bits, fsr, base)`` is the pure function (tested in ``tests/test_widgets_log_grid.py``):
it log-quantizes ``w`` with ``mpqlab.quant.log.log_quantize`` and measures the error, next to a
uniform grid with the same number of values,

    MSE = mean((w_hat - w)^2),   uniform: symmetric, per tensor, range [-max|w|, max|w|]

``plot_log_grid`` draws the result twice: over the values themselves (where log levels crowd near
zero) and over log2|w| (where they are evenly spaced, one per 1/s octave). ``log_grid_panel`` only
wires the bits / fsr sliders and the base drop-down to those two functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mpqlab.errors import MpqlabError, TensorValueError, check_tensor
from mpqlab.quant.log import fsr_from_data, log_levels, log_quantize, magnitude_bits, steps_per_octave
from mpqlab.quant.uniform import fake_quantize, qparams_from_range, quant_range
from mpqlab.plots import new_figure
from mpqlab.widgets.output import show_result

BASE_LABELS = {"2": "2", "sqrt2": "sqrt(2)"}  # base name in mpqlab.quant.log -> what the drop-down shows


@dataclass
class LogGridResult:
    """Everything the panel shows for one setting of the controls."""

    bits: int
    fsr: int
    base: str
    signed: bool
    levels: torch.Tensor  # (L,) every value LogQuant can output, sorted (float64)
    w_hat: torch.Tensor  # log-quantized copy of w, same shape
    mse: float  # mean (w_hat - w)^2 of the log grid
    linear_mse: float  # the same for a symmetric uniform grid with as many values
    levels_used: int  # distinct values that occur in w_hat
    zero_fraction: float  # share of nonzero inputs sent to 0 (below the grid's lower end)
    clipped_fraction: float  # share of inputs rounded above the top level (clipped to it)

    def summary(self) -> str:
        return (f"MSE: {self.mse:.3e}, linear MSE: {self.linear_mse:.3e}, "
                f"levels used: {self.levels_used} of {len(self.levels)}, "
                f"to zero: {100 * self.zero_fraction:.1f}%, clipped: {100 * self.clipped_fraction:.2f}%")


def _linear_qparams(w: torch.Tensor, bits: int, signed: bool):
    top = float(w.detach().abs().max()) if signed else float(w.detach().clamp(min=0).max())
    scale, zero_point = qparams_from_range(-top if signed else 0.0, top, bits, symmetric=True,
                                           signed=signed, narrow=signed)
    return scale, zero_point, *quant_range(bits, signed, narrow=signed)


def linear_grid_levels(w: torch.Tensor, bits: int, signed: bool = True) -> torch.Tensor:
    """The uniform reference grid: scale * q for q = q_min .. q_max (see ``linear_grid_quantize``)."""
    scale, zero_point, q_min, q_max = _linear_qparams(w, bits, signed)
    return (torch.arange(q_min, q_max + 1) - zero_point).double() * float(scale)


def linear_grid_quantize(w: torch.Tensor, bits: int, signed: bool = True) -> torch.Tensor:
    """Uniform reference with as many values as the log grid: symmetric over [-max|w|, max|w|].

    Signed: the narrow range [-(2^(b-1) - 1), 2^(b-1) - 1], 2^b - 1 values like signed LogQuant.
    Unsigned: [0, 2^b - 1] over [0, max w], 2^b values like unsigned LogQuant.
    """
    scale, zero_point, q_min, q_max = _linear_qparams(w, bits, signed)
    return fake_quantize(w.detach(), scale, zero_point, q_min, q_max)


def log_grid(w: torch.Tensor, bits: int, fsr: int, base: str = "2", signed: bool = True) -> LogGridResult:
    """Log-quantize ``w`` (LogQuant of ``mpqlab.quant.log``) and measure it against the uniform grid.

    Raises BitWidthError / QuantParamError / TensorValueError for bad controls or data.
    """
    check_tensor(w, name="w")
    w = w.detach().flatten().double()  # (n,)
    w_hat = log_quantize(w, bits, fsr, signed, base)  # validates bits, fsr and base
    s, m = steps_per_octave(base), magnitude_bits(bits, signed)
    mag = w.abs() if signed else w.clamp(min=0)
    if not bool((mag > 0).any()):  # nothing to place on the grid, and no log2|w| histogram to draw
        kind = "nonzero" if signed else "positive"
        raise TensorValueError(f"w has no {kind} values: a log grid places magnitudes > 0 "
                               f"(log2 0 = -inf), so there is nothing to show; choose another tensor")
    k = torch.round(s * torch.log2(mag[mag > 0]))  # exponents before clipping
    n = w.numel()
    return LogGridResult(
        bits=bits, fsr=int(fsr), base=base, signed=signed,
        levels=log_levels(bits, fsr, signed, base),
        w_hat=w_hat,
        mse=float(((w_hat - w) ** 2).mean()),
        linear_mse=float(((linear_grid_quantize(w, bits, signed) - w) ** 2).mean()),
        levels_used=int(torch.unique(w_hat).numel()),
        zero_fraction=int((k <= fsr - 2**m).sum()) / n,
        clipped_fraction=int((k > fsr - 1).sum()) / n,
    )


def plot_log_grid(result: LogGridResult, w: torch.Tensor, title: str = ""):
    """Two panels: the histogram of w with the levels, and the histogram of log2|w| with the level exponents."""
    w = w.detach().flatten().double()
    s, m = steps_per_octave(result.base), magnitude_bits(result.bits, result.signed)
    fig, (ax_lin, ax_log) = new_figure(1, 2, figsize=(13, 3.4))
    ax_lin.hist(w.numpy(), bins=200, color="0.75")
    for v in result.levels.tolist():
        ax_lin.axvline(v, color="C3", lw=0.8, alpha=0.8)
    ax_lin.set_xlabel("value")
    ax_lin.set_ylabel("count")
    ax_lin.set_title(f"{title}: {len(result.levels)} log levels (red)" if title else "log levels (red)", fontsize=10)

    mags = w.abs() if result.signed else w.clamp(min=0)
    logs = torch.log2(mags[mags > 0]).numpy()
    ax_log.hist(logs, bins=120, color="0.75")
    lowest_kept, top = (result.fsr - 2**m + 1) / s, (result.fsr - 1) / s  # exponents of the lowest and top levels
    for e in torch.arange(result.fsr - 2**m + 1, result.fsr).tolist():
        ax_log.axvline(e / s, color="C3", lw=0.8, alpha=0.8)
    half = 0.5 / s  # log-domain rounding: each level owns half a step on either side
    ax_log.axvspan(logs.min() - half, lowest_kept - half, color="C0", alpha=0.12, label="-> 0")
    ax_log.axvspan(top + half, max(logs.max(), top + half) + half, color="C1", alpha=0.2, label="clipped")
    ax_log.set_xlabel(r"$\log_2 |w|$")
    ax_log.set_title(f"bits={result.bits}, fsr={result.fsr}, base {BASE_LABELS[result.base]}: "
                     f"evenly spaced in the log domain", fontsize=10)
    ax_log.legend(fontsize=8, frameon=False, loc="upper left")
    fig.tight_layout()
    return fig


def render_log_grid(w: torch.Tensor, bits: int, fsr: int, base: str = "2", title: str = ""):
    """(figure, summary line), or (None, "Error: ...") when the controls are invalid: what the panel shows."""
    try:
        result = log_grid(w, bits, fsr, base)
        return plot_log_grid(result, w, title), result.summary()
    except MpqlabError as err:
        return None, f"Error: {err}"


def fsr_slider_range(w: torch.Tensor, base: str) -> tuple[int, int, int]:
    """(min, max, value) for the fsr slider: from 8 octaves below to 2 octaves above the data-driven fsr."""
    check_tensor(w, name="w")
    s, fsr = steps_per_octave(base), fsr_from_data(w.detach().double(), base)  # int and bool tensors too
    return fsr - 8 * s, fsr + 2 * s, fsr


def log_grid_panel(w: torch.Tensor, bits: int = 4, base: str = "2", title: str = ""):
    """Sliders for bits and fsr and a base drop-down, redrawing ``render_log_grid`` below them."""
    import ipywidgets as widgets
    from IPython.display import display

    lo, hi, fsr = fsr_slider_range(w, base)
    bits_slider = widgets.IntSlider(value=bits, min=2, max=8, description="bits", continuous_update=False)
    fsr_slider = widgets.IntSlider(value=fsr, min=lo, max=hi, description="fsr", continuous_update=False)
    base_menu = widgets.Dropdown(options=[(label, name) for name, label in BASE_LABELS.items()], value=base,
                                 description="base")

    def on_base(change):  # fsr counts 1/s octaves: move it to the new base's data-driven value
        lo, hi, fsr = fsr_slider_range(w, change["new"])
        with fsr_slider.hold_trait_notifications():
            fsr_slider.min, fsr_slider.max, fsr_slider.value = lo, hi, fsr

    base_menu.observe(on_base, names="value")  # registered first, so it runs before the redraw

    def update(bits, fsr, base):
        fig, text = render_log_grid(w, bits, fsr, base, title)
        show_result(fig, text)

    out = widgets.interactive_output(update, {"bits": bits_slider, "fsr": fsr_slider, "base": base_menu})
    display(widgets.VBox([widgets.HBox([bits_slider, fsr_slider, base_menu]), out]))
