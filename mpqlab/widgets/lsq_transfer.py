"""The LSQ transfer-function panel of notebook 06: the quantizer's output and its step-size gradient.

``lsq_transfer(bits, step, signed)`` is the pure function (tested in ``tests/test_widgets_lsq_transfer.py``).
For inputs ``v`` on a line it returns LSQ's output and the gradient LSQ gives its step size
(Esser et al. 2020, eq. 3), obtained by autograd through ``mpqlab.quant.lsq.lsq_quantize_autograd``:

    v_hat = s round(clip(v / s, -Q_N, Q_P))

    d v_hat / d s = round(v/s) - v/s   inside the grid,   -Q_N below it,   Q_P above it

``plot_lsq_transfer`` draws both; ``lsq_transfer_panel`` only wires sliders to them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mpqlab.errors import MpqlabError, QuantParamError, check_bits, check_positive
from mpqlab.quant.lsq import lsq_quantize_autograd, lsq_range
from mpqlab.plots import new_figure
from mpqlab.widgets.output import show_result


@dataclass
class TransferResult:
    """LSQ's transfer function and step-size gradient over a line of inputs."""

    bits: int
    step: float
    signed: bool
    q_min: int
    q_max: int
    v: torch.Tensor  # (n,) inputs
    v_hat: torch.Tensor  # (n,) quantized outputs
    grad_step: torch.Tensor  # (n,) d v_hat / d s at each input (gradient scale g = 1)

    @property
    def levels(self) -> int:
        return self.q_max - self.q_min + 1

    @property
    def clip_low(self) -> float:
        return self.step * self.q_min

    @property
    def clip_high(self) -> float:
        return self.step * self.q_max

    def summary(self) -> str:
        return (f"levels: {self.levels}, step: {self.step:.3f}, "
                f"clip range: [{self.clip_low:.3f}, {self.clip_high:.3f}]")


def lsq_transfer(bits: int, step: float, signed: bool = True, n_points: int = 801,
                 span: float | None = None) -> TransferResult:
    """LSQ output and step gradient for ``n_points`` inputs in ``[-span, span]`` (default 1.25 x the clip range).

    Raises BitWidthError for bits outside 1..8 (2..8 when signed: a signed 1-bit grid has no positive
    level) and QuantParamError for a step or span that is not positive.
    """
    signed = bool(signed)
    bits = check_bits(bits, low=2 if signed else 1, high=8)
    step = check_positive(step, name="step")
    if n_points < 2:
        raise QuantParamError(f"n_points must be at least 2, got {n_points}")
    q_min, q_max = lsq_range(bits, signed)
    if span is None:
        span = 1.25 * step * max(q_max, -q_min)
    span = check_positive(span, name="span")
    tiny, huge = torch.finfo(torch.float32).tiny, torch.finfo(torch.float32).max
    if step < tiny or span > huge:  # the line of inputs and v / s are float32
        raise QuantParamError(f"step {step:g} with span {span:g} is outside float32: the step must be at least "
                              f"{tiny:.3g} and the inputs at most {huge:.3g}")
    v = torch.linspace(-span, span, n_points)  # (n,)
    s = torch.full_like(v, step, requires_grad=True)  # one copy of s per input: autograd keeps them apart
    v_hat = lsq_quantize_autograd(v, s, q_min, q_max)
    v_hat.sum().backward()
    return TransferResult(bits, step, signed, q_min, q_max, v, v_hat.detach(), s.grad.detach())


def plot_lsq_transfer(result: TransferResult):
    """Left: v_hat against v (with the identity). Right: d v_hat / d s against v."""
    fig, (ax_t, ax_g) = new_figure(1, 2, figsize=(12, 3.4))
    v = result.v.numpy()
    ax_t.plot(v, v, color="0.7", lw=1, label="identity")
    ax_t.plot(v, result.v_hat.numpy(), color="C0", lw=1.6, label=r"$\hat{v}$")
    for edge in (result.clip_low, result.clip_high):
        ax_t.axvline(edge, color="C1", lw=0.8, ls="--")
    ax_t.set_xlabel("v")
    ax_t.set_ylabel(r"$\hat{v}$")
    kind = "signed" if result.signed else "unsigned"
    ax_t.set_title(f"LSQ, {result.bits}-bit {kind}, s = {result.step:.3f}", fontsize=10)
    ax_t.legend(fontsize=8, frameon=False)
    ax_g.plot(v, result.grad_step.numpy(), color="C3", lw=1.2)
    ax_g.axhline(0, color="0.5", lw=0.6)
    for edge in (result.clip_low, result.clip_high):
        ax_g.axvline(edge, color="C1", lw=0.8, ls="--")
    ax_g.set_xlabel("v")
    ax_g.set_ylabel(r"$\partial \hat{v} / \partial s$")
    ax_g.set_title("step-size gradient: a saw-tooth inside, $-Q_N$ / $Q_P$ outside", fontsize=10)
    fig.tight_layout()
    return fig


def render_lsq_transfer(bits: int, step: float, signed: bool = True):
    """(figure, summary line), or (None, "Error: ...") for invalid controls: what the panel shows."""
    try:
        result = lsq_transfer(bits, step, signed)
        return plot_lsq_transfer(result), result.summary()
    except MpqlabError as err:
        return None, f"Error: {err}"


def lsq_transfer_panel(bits: int = 4, step: float = 0.1, signed: bool = True):
    """Sliders for bits and step size and a signed/unsigned toggle, redrawing ``render_lsq_transfer``."""
    import ipywidgets as widgets
    from IPython.display import display

    bits_slider = widgets.IntSlider(value=bits, min=1, max=8, description="bits", continuous_update=False)
    step_slider = widgets.FloatSlider(value=step, min=0.0, max=0.5, step=0.005, readout_format=".3f",
                                      description="step size s", continuous_update=False)
    sign_toggle = widgets.ToggleButtons(options=[("signed (weights)", True), ("unsigned (after ReLU)", False)],
                                        value=signed, description="grid")

    def update(bits, step, signed):
        fig, text = render_lsq_transfer(bits, step, signed)
        show_result(fig, text)

    out = widgets.interactive_output(update, {"bits": bits_slider, "step": step_slider, "signed": sign_toggle})
    display(widgets.VBox([widgets.HBox([bits_slider, step_slider]), sign_toggle, out]))
