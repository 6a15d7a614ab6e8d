"""The outlier-grid panel of notebook 04: an outlier-aware grid drawn over a real weight or activation histogram.

``outlier_grid(x, bits, ratio)`` is the pure function (tested in ``tests/test_widgets_outlier.py``): it
applies ``mpqlab.quant.outlier`` to ``x`` and measures the error against plain linear quantization with
the same bits (the same grid stretched to max|x|, i.e. ratio 0),

    t = (1 - ratio) quantile of the non-zero |x|,   scale = t / q_max
    MSE = mean((x_hat - x)^2)

``plot_outlier_grid`` draws the histogram with the levels and the outlier region, and the error
x_hat - x of both grids against x. ``outlier_panel`` only wires a tensor menu and the bits / ratio
sliders to those two functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mpqlab.errors import MpqlabError, check_tensor
from mpqlab.quant.outlier import outlier_quantize, outlier_threshold, q_max_for
from mpqlab.plots import new_figure
from mpqlab.widgets.output import show_result


@dataclass
class OutlierGridResult:
    """Everything the panel shows for one setting of the controls."""

    bits: int
    ratio: float  # requested share of outliers among the non-zero values
    signed: bool
    threshold: float  # t, the top level of the grid
    scale: float  # t / q_max, the step of the grid
    levels: torch.Tensor  # (L,) the grid's values, scale * [q_min .. q_max]
    x_hat: torch.Tensor  # outlier-aware copy of x (flattened)
    linear_hat: torch.Tensor  # plain linear copy (ratio 0: the grid spans max|x|)
    n_outliers: int  # values above t, kept in full precision
    mse: float
    linear_mse: float

    @property
    def outlier_share(self) -> float:
        """Outliers as a share of all values (zeros included)."""
        return self.n_outliers / self.x_hat.numel()

    def summary(self) -> str:
        gain = self.linear_mse / max(self.mse, 1e-30)
        return (f"MSE: {self.mse:.3e}, linear MSE: {self.linear_mse:.3e} ({gain:.1f}x), "
                f"outliers: {self.n_outliers} ({100 * self.outlier_share:.2f}%), "
                f"threshold: {self.threshold:.4g}, step: {self.scale:.4g}")


def outlier_grid(x: torch.Tensor, bits: int, ratio: float, signed: bool | None = None) -> OutlierGridResult:
    """Outlier-aware quantization of ``x`` at ``bits`` with ``ratio`` outliers, and its linear reference.

    ``signed=None`` decides from the data (signed if x holds negative values). Raises BitWidthError,
    QuantParamError or TensorValueError for bad controls or data.
    """
    check_tensor(x, name="x")
    x = x.detach().flatten().float()  # (n,)
    signed = bool((x < 0).any()) if signed is None else signed
    q_max = q_max_for(bits, signed)  # validates bits (signed grids need at least 2)
    result = outlier_quantize(x, bits, outlier_threshold(x, ratio, signed), signed)  # validates ratio
    linear = outlier_quantize(x, bits, outlier_threshold(x, 0.0, signed), signed)
    codes = torch.arange(-q_max if signed else 0, q_max + 1, dtype=torch.float32)
    return OutlierGridResult(
        bits=bits, ratio=float(ratio), signed=signed, threshold=result.threshold, scale=result.scale,
        levels=codes * result.scale, x_hat=result.x_hat, linear_hat=linear.x_hat, n_outliers=result.n_outliers,
        # float64: a squared error of values near 1e20 or above overflows float32 to inf
        mse=float((result.x_hat.double() - x.double()).pow(2).mean()),
        linear_mse=float((linear.x_hat.double() - x.double()).pow(2).mean()),
    )


def plot_outlier_grid(result: OutlierGridResult, x: torch.Tensor, title: str = ""):
    """Left: histogram of x (log counts) with the grid levels and the outlier region shaded.
    Right: the error x_hat - x against x, for the linear grid and the outlier-aware one."""
    x = x.detach().flatten().float()
    fig, (ax_hist, ax_err) = new_figure(1, 2, figsize=(13, 3.4))
    # float64 bins: 200 bins over subnormal values, or over +-3e38, do not exist in float32
    ax_hist.hist(x.double().numpy(), bins=200, color="0.7", log=True)
    for v in result.levels.tolist():
        ax_hist.axvline(v, color="C3", lw=0.7, alpha=0.8)
    t, top = result.threshold, float(x.abs().max())
    ax_hist.axvspan(t, max(top, t), color="C1", alpha=0.2, label="outliers: kept in float")
    if result.signed:
        ax_hist.axvspan(-max(top, t), -t, color="C1", alpha=0.2)
    ax_hist.set_xlabel("value")
    ax_hist.set_ylabel("count (log)")
    name = f"{title}: " if title else ""
    ax_hist.set_title(f"{name}{len(result.levels)} levels (red) up to t = {t:.3g}", fontsize=10)
    ax_hist.legend(fontsize=8, frameon=False, loc="upper right")

    every = max(1, x.numel() // 20000)  # a scatter of 20k points reads as well as one of a million
    xs = x[::every].numpy()
    ax_err.scatter(xs, (result.linear_hat - x)[::every].numpy(), s=2, color="0.6", label="linear (ratio 0)")
    ax_err.scatter(xs, (result.x_hat - x)[::every].numpy(), s=2, color="C3",
                   label=f"outlier-aware ({100 * result.ratio:.1f}%)")
    ax_err.axhline(0, color="black", lw=0.5)
    ax_err.set_xlabel("value x")
    ax_err.set_ylabel(r"error $\hat{x} - x$")
    ax_err.set_title(f"MSE {result.mse:.2e} vs linear {result.linear_mse:.2e}", fontsize=10)
    ax_err.legend(fontsize=8, frameon=False, markerscale=4, loc="upper left")  # "best" is slow on 40k points
    fig.tight_layout()
    return fig


def render_outlier_grid(x: torch.Tensor, bits: int, ratio: float, title: str = ""):
    """(figure, summary line), or (None, "Error: ...") when the controls are invalid: what the panel shows."""
    try:
        result = outlier_grid(x, bits, ratio)
        return plot_outlier_grid(result, x, title), result.summary()
    except MpqlabError as err:
        return None, f"Error: {err}"


def outlier_panel(tensors: dict, bits: int = 3, percent: float = 2.0):
    """A tensor menu, a bits slider and an outlier-percentage slider, redrawing ``render_outlier_grid``."""
    import ipywidgets as widgets
    from IPython.display import display

    menu = widgets.Dropdown(options=list(tensors), description="tensor", layout=widgets.Layout(width="360px"))
    bits_slider = widgets.IntSlider(value=bits, min=1, max=8, description="bits", continuous_update=False)
    percent_slider = widgets.FloatSlider(value=percent, min=0.0, max=10.0, step=0.1, description="outliers %",
                                         continuous_update=False, readout_format=".1f")

    def update(name, bits, percent):
        fig, text = render_outlier_grid(tensors[name], bits, percent / 100, title=name)
        show_result(fig, text)

    out = widgets.interactive_output(update, {"name": menu, "bits": bits_slider, "percent": percent_slider})
    display(widgets.VBox([widgets.HBox([menu, bits_slider, percent_slider]), out]))
