"""The quantizer explorer of notebook 01: a uniform grid drawn over a real tensor, and what it costs.

``explore_quantizer(x, bits, symmetric, per_channel, method, ch_axis, narrow)`` is the pure function (tested in
``tests/test_widgets_quantizer_explorer.py``). An observer of ``mpqlab.quant`` measures the clipping
range with the chosen calibration method, ``fake_quantize`` maps ``x`` onto the grid, and the error is

    MSE = mean((x_hat - x)^2),   x_hat = s (clamp(round(x / s) + z, q_min, q_max) - z)

and, because a tensor's MSE is dominated by its largest channels, also per channel c along ``ch_axis``:

    channel error = mean over c of  mean_c((x_hat - x)^2) / mean_c(x^2)

(a channel rounded to all zeros has error 1, however small its values).

Symmetric grids are signed (zero point 0), asymmetric grids unsigned with a zero point. A symmetric grid
is the *restricted* signed range by default, as the workbook's weight quantizer
(``mpqlab.quant.uniform.default_weight_quantizer``, Jacob et al. 2018):

    restricted (narrow=True):  q in [-(2^(b-1) - 1), 2^(b-1) - 1],  scale = max|x| / (2^(b-1) - 1)
    full range (narrow=False): q in [-2^(b-1), 2^(b-1) - 1],        scale = max|x| / (2^(b-1) - 1/2)

e.g. 4 bits: [-7, 7] with scale max|x| / 7, or [-8, 7] with max|x| / 7.5 (min-max shown; the other methods
shrink max|x|). Asymmetric grids always use all 2^b codes.
``plot_quantizer`` draws the result; ``quantizer_explorer_panel`` only wires controls to the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mpqlab.errors import MpqlabError, QuantParamError, TensorValueError, check_tensor
from mpqlab.quant.kl import KLObserver
from mpqlab.quant.observers import MinMaxObserver, MSEObserver, PercentileObserver, channel_rows
from mpqlab.quant.uniform import fake_quantize, quantize
from mpqlab.plots import new_figure
from mpqlab.widgets.output import show_result

# calibration method -> (label shown in the drop-down, observer class)
METHODS = {
    "minmax": ("min-max", MinMaxObserver),
    "percentile": ("percentile 99.99", PercentileObserver),
    "mse": ("MSE", MSEObserver),
    "kl": ("KL (entropy)", KLObserver),
}


@dataclass
class ExplorerResult:
    """Everything the panel shows for one setting of the controls."""

    bits: int
    symmetric: bool
    per_channel: bool
    method: str
    narrow: bool  # restricted signed range [-(2^(b-1) - 1), 2^(b-1) - 1]; always False for asymmetric grids
    scale: torch.Tensor  # () per-tensor, (C,) per-channel
    zero_point: torch.Tensor  # same shape, int32
    q_min: int
    q_max: int
    x_hat: torch.Tensor  # fake-quantized copy of x, same shape
    mse: float  # mean (x_hat - x)^2
    channel_error: float  # mean over channels of each channel's MSE / its mean x^2 (0 for all-zero channels)
    levels_used: int  # distinct integer codes that occur
    clip_low: float  # lowest value any channel's grid reaches
    clip_high: float  # highest value any channel's grid reaches
    clipped_fraction: float  # share of values outside their channel's grid

    @property
    def levels(self) -> int:
        return self.q_max - self.q_min + 1

    def grid(self) -> torch.Tensor:
        """Every value the per-tensor grid can output, s (q - z) for q = q_min .. q_max (per-tensor only)."""
        if self.per_channel:
            raise QuantParamError("a per-channel quantizer has one grid per channel; grid() is per-tensor only")
        return self.scale * (torch.arange(self.q_min, self.q_max + 1) - self.zero_point).float()

    @property
    def range_name(self) -> str:
        """"restricted" or "full range" for a symmetric grid, "" for an asymmetric one (always the full 2^b codes)."""
        if not self.symmetric:
            return ""
        return "restricted" if self.narrow else "full range"

    def summary(self) -> str:
        return (f"MSE: {self.mse:.3e}, levels used: {self.levels_used} of {self.levels}, "
                f"clip: [{self.clip_low:.3g}, {self.clip_high:.3g}], clipped: {100 * self.clipped_fraction:.2f}%, "
                f"channel error: {100 * self.channel_error:.2f}%")


def explore_quantizer(x: torch.Tensor, bits: int, symmetric: bool = True, per_channel: bool = False,
                      method: str = "minmax", ch_axis: int = 0, narrow: bool = True) -> ExplorerResult:
    """Calibrate a ``bits``-bit uniform quantizer on ``x`` with ``method`` and measure it on ``x``.

    ``ch_axis`` is the channel axis used when ``per_channel`` (0 for conv weights, 1 for activations).
    ``narrow`` chooses a symmetric grid's signed range: restricted [-(2^(b-1) - 1), 2^(b-1) - 1] (default,
    the grid of ``default_weight_quantizer``; 4 bits: [-7, 7]) or, with ``narrow=False``, the full range
    [-2^(b-1), 2^(b-1) - 1] (4 bits: [-8, 7]). Asymmetric grids ignore it (``result.narrow`` is then False).
    Raises BitWidthError / QuantParamError / TensorValueError for bad controls or data, e.g. KL
    calibration per channel (TensorRT's entropy calibration is defined per tensor), or a restricted
    1-bit grid (it would hold the single code 0).
    """
    check_tensor(x, name="x")
    if method not in METHODS:
        raise QuantParamError(f"unknown calibration method {method!r}; choose from {sorted(METHODS)}")
    if not isinstance(narrow, bool):
        raise QuantParamError(f"narrow must be True (restricted range) or False (full range), got {narrow!r}")
    narrow = narrow and symmetric  # an asymmetric (unsigned) grid always uses all 2^b codes
    x = x.detach().float()
    axis = ch_axis if per_channel else None
    if method == "kl":
        if per_channel:
            raise QuantParamError("KL calibration works per tensor (one histogram); choose per-tensor, "
                                  "or another method for per-channel")
        observer = KLObserver(bits, symmetric=symmetric, signed=symmetric, narrow=narrow)
    else:
        observer = METHODS[method][1](bits, symmetric=symmetric, signed=symmetric, narrow=narrow, ch_axis=axis)
    observer(x)
    scale, zero_point = observer.compute_qparams()
    q_min, q_max = observer.q_min, observer.q_max
    q = quantize(x, scale, zero_point, q_min, q_max, axis)  # int32 codes
    x_hat = fake_quantize(x, scale, zero_point, q_min, q_max, axis)
    low, high = scale * (q_min - zero_point), scale * (q_max - zero_point)  # each grid's ends
    if not bool(torch.isfinite(low).all() and torch.isfinite(high).all()):
        raise TensorValueError(f"x reaches {float(x.abs().max()):.3g}: the {observer.bits}-bit grid's ends overflow "
                               f"float32 (largest {torch.finfo(torch.float32).max:.3g}); scale x down first")
    if axis is not None:
        shape = [1] * x.dim()
        shape[axis] = -1
        low_b, high_b = low.reshape(shape), high.reshape(shape)
    else:
        low_b, high_b = low, high
    half = scale.reshape(low_b.shape) / 2  # rounding still maps values within half a step onto the end levels
    clipped = (x < low_b - half) | (x > high_b + half)
    rows, rows_hat = channel_rows(x, ch_axis).double(), channel_rows(x_hat, ch_axis).double()  # (C, N)
    power = rows.pow(2).mean(dim=1)
    per_channel_error = (rows_hat - rows).pow(2).mean(dim=1) / power.clamp(min=torch.finfo(power.dtype).tiny)
    return ExplorerResult(
        bits=observer.bits, symmetric=symmetric, per_channel=per_channel, method=method, narrow=narrow,
        scale=scale, zero_point=zero_point, q_min=q_min, q_max=q_max, x_hat=x_hat,
        mse=float((x_hat.double() - x.double()).pow(2).mean()),  # float64: squares of large values overflow float32
        channel_error=float(per_channel_error.mean()),
        levels_used=int(torch.unique(q).numel()),
        clip_low=float(low.min()), clip_high=float(high.max()),
        clipped_fraction=float(clipped.float().mean()),
    )


def plot_quantizer(result: ExplorerResult, x: torch.Tensor, title: str = "", max_points: int = 4000):
    """Left: histogram of x (grey) and of x_hat (red), with the grid (per-tensor) and clipped zones.
    Right: the error x_hat - x against x for a seeded sample of ``max_points`` values."""
    x = x.detach().float().flatten()
    x_hat = result.x_hat.flatten()
    fig, (ax_h, ax_e) = new_figure(1, 2, figsize=(13, 3.4))
    lo, hi = float(x.min()), float(x.max())
    # float64 bins: 200 bins over subnormal values, or over +-3e38, do not exist in float32
    bins = torch.linspace(min(lo, result.clip_low), max(hi, result.clip_high), 201, dtype=torch.float64).numpy()
    ax_h.hist(x.double().numpy(), bins=bins, color="0.7", log=True, label="x")
    ax_h.hist(x_hat.double().numpy(), bins=bins, histtype="step", color="C3", log=True, label=r"$\hat{x}$")
    if not result.per_channel and result.levels <= 64:  # beyond 64 lines the grid is a grey wash
        for v in result.grid().tolist():
            ax_h.axvline(v, color="C0", lw=0.5, alpha=0.5)
    ax_h.axvspan(bins[0], result.clip_low, color="C1", alpha=0.15)
    ax_h.axvspan(result.clip_high, bins[-1], color="C1", alpha=0.15, label="outside every grid")
    where = "per-channel" if result.per_channel else "per-tensor"
    # which grid is drawn, e.g. "symmetric restricted [-7, 7]" or "symmetric full range [-8, 7]"
    kind = f"{'symmetric ' + result.range_name if result.symmetric else 'asymmetric'} [{result.q_min}, {result.q_max}]"
    ax_h.set_title(f"{title}: {result.bits}-bit {kind} {where}, {METHODS[result.method][0]}".lstrip(": "),
                   fontsize=10)
    ax_h.set_xlabel("value")
    ax_h.set_ylabel("count")
    ax_h.legend(fontsize=8, frameon=False)

    idx = torch.randperm(x.numel(), generator=torch.Generator().manual_seed(0))[:max_points]
    ax_e.scatter(x[idx].numpy(), (x_hat[idx] - x[idx]).numpy(), s=2, color="C0", alpha=0.5)
    ax_e.axhline(0, color="0.5", lw=0.6)
    ax_e.set_xlabel("x")
    ax_e.set_ylabel(r"$\hat{x} - x$")
    ax_e.set_title(f"error: rounding inside the grid, clipping outside (MSE {result.mse:.2e})", fontsize=10)
    fig.tight_layout()
    return fig


def render_quantizer(x: torch.Tensor, bits: int, symmetric: bool, per_channel: bool, method: str,
                     ch_axis: int = 0, title: str = "", narrow: bool = True):
    """(figure, summary line), or (None, "Error: ...") when the controls are invalid: what the panel shows."""
    try:
        result = explore_quantizer(x, bits, symmetric, per_channel, method, ch_axis, narrow)
        return plot_quantizer(result, x, title), result.summary()
    except MpqlabError as err:
        return None, f"Error: {err}"


def quantizer_explorer_panel(tensors: dict, bits: int = 4, method: str = "minmax"):
    """Controls for the tensor, bits, scheme, range, granularity and calibration, redrawing ``render_quantizer``.

    The "range" buttons (restricted by default, or full range) apply to the symmetric scheme only.

    ``tensors`` maps a name to ``(tensor, ch_axis)``, e.g. ``{"dw2 weights": (w, 0)}``.
    """
    import ipywidgets as widgets
    from IPython.display import display

    names = list(tensors)
    tensor_menu = widgets.Dropdown(options=names, value=names[0], description="tensor")
    bits_slider = widgets.IntSlider(value=bits, min=2, max=8, description="bits", continuous_update=False)
    scheme = widgets.ToggleButtons(options=[("symmetric", True), ("asymmetric", False)], value=True,
                                   description="scheme")
    grid_range = widgets.ToggleButtons(options=[("restricted", True), ("full range", False)], value=True,
                                       description="range",
                                       tooltips=["[-(2^(b-1) - 1), 2^(b-1) - 1], e.g. [-7, 7] at 4 bits",
                                                 "[-2^(b-1), 2^(b-1) - 1], e.g. [-8, 7] at 4 bits"])
    granularity = widgets.ToggleButtons(options=[("per-tensor", False), ("per-channel", True)], value=False,
                                        description="granularity")
    method_menu = widgets.Dropdown(options=[(label, name) for name, (label, _) in METHODS.items()], value=method,
                                   description="calibration")

    def grey_out_range(change):  # an asymmetric grid ignores the range buttons
        grid_range.disabled = not change["new"]

    scheme.observe(grey_out_range, names="value")

    def update(name, bits, symmetric, narrow, per_channel, method):
        x, ch_axis = tensors[name]
        fig, text = render_quantizer(x, bits, symmetric, per_channel, method, ch_axis, title=name, narrow=narrow)
        show_result(fig, text)

    controls = {"name": tensor_menu, "bits": bits_slider, "symmetric": scheme, "narrow": grid_range,
                "per_channel": granularity, "method": method_menu}
    out = widgets.interactive_output(update, controls)
    display(widgets.VBox([widgets.HBox([tensor_menu, bits_slider, method_menu]),
                          widgets.HBox([scheme, grid_range, granularity]), out]))
