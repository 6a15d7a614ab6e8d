"""The accumulated-error panel of notebook 05: how the skip's precision changes the error along ResNet-20.

``highway_error(model, calib_images, probe, bits, skip)`` is the pure function (tested in
``tests/test_widgets_highway_error.py``): it builds ``mpqlab.highway.highway_resnet`` with W``bits``A``bits``
residual branches and the chosen skip precision, calibrates it (``mpqlab.quant.ptq.calibrate``) and measures
the relative error after every block against the float model,

    e_l = ||y_l(quantized) - y_l(float)|| / ||y_l(float)||     (``mpqlab.highway.relative_errors``)

Skip choices: "same bits" (everything quantized), "8-bit" (an 8-bit highway), "float" (a float highway).
``plot_highway_error`` draws the chosen curve with the other two skips at the same bits faintly behind it.
``highway_error_panel`` only wires a bits slider and a skip toggle to those functions, and keeps every
configuration it has computed in a dict, so going back to one is instant.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from mpqlab.errors import MpqlabError, QuantParamError, TensorValueError, check_bits, check_tensor
from mpqlab.experiments.precision_highway import skip_bits_of
from mpqlab.highway import highway_resnet, relative_errors, residual_blocks
from mpqlab.plots import new_figure
from mpqlab.quant.ptq import calibrate
from mpqlab.widgets.output import show_result

SKIPS = {"same bits": "quantized", "8-bit": "8", "float": "float"}  # label -> precision_highway's skip name
COLORS = {"same bits": "C3", "8-bit": "C2", "float": "C0"}
MIN_BITS, MAX_BITS = 2, 8


@dataclass
class HighwayErrorResult:
    """The accumulated error of one (bits, skip) configuration."""

    bits: int
    skip: str  # one of SKIPS
    blocks: list[str]  # residual block names, in forward order
    errors: list[float]  # e_l after every block
    seconds: float  # wall time to build, calibrate and measure

    def summary(self) -> str:
        return (f"W{self.bits}A{self.bits} branches, skip: {self.skip}\n"
                f"error after the first block: {self.errors[0]:.4f}\n"
                f"error after the last block: {self.errors[-1]:.4f}")


def skip_bits(skip: str, bits: int) -> int | None:
    """The skip quantizer's bits for a skip label: "same bits" -> bits, "8-bit" -> 8, "float" -> None."""
    if skip not in SKIPS:
        raise QuantParamError(f"skip must be one of {list(SKIPS)}, got {skip!r}")
    return skip_bits_of(SKIPS[skip], bits)


def check_images(model: nn.Module, images, name: str = "images") -> torch.Tensor:
    """``images`` as the model's first conv takes them: a float (N, C, H, W) batch with C = its in_channels.

    Checked here, so a wrong batch is a TensorValueError naming the shapes, not torch's conv2d error.
    """
    check_tensor(images, name=name)
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    channels = None if first is None else first.in_channels
    if images.dim() != 4 or not images.is_floating_point() or (channels and images.shape[1] != channels):
        want = f"(N, {channels}, H, W)" if channels else "(N, C, H, W)"
        raise TensorValueError(f"{name} must be a floating-point batch {want} for {type(model).__name__}, "
                               f"got {str(images.dtype).removeprefix('torch.')} of shape {tuple(images.shape)}")
    return images


def highway_error(model: nn.Module, calib_images: torch.Tensor, probe: torch.Tensor, bits: int, skip: str,
                  device: str = "cpu") -> HighwayErrorResult:
    """e_l after every residual block of ``model`` (float ResNet) quantized at ``bits`` with the ``skip`` choice.

    Calibrated on ``calib_images``, measured on ``probe``. Raises BitWidthError (bits outside 2..8),
    QuantParamError (unknown skip), PolicyError (not a ResNet) or TensorValueError (bad images).
    """
    bits = check_bits(bits, low=MIN_BITS, high=MAX_BITS)
    skip_b = skip_bits(skip, bits)
    check_images(model, calib_images, "calib_images")
    check_images(model, probe, "probe")
    start = time.perf_counter()
    qmodel = calibrate(highway_resnet(model, bits, skip_b), calib_images, device=device)
    errors = relative_errors(model, qmodel, probe, device)
    return HighwayErrorResult(bits=bits, skip=skip, blocks=[name for name, _ in residual_blocks(model)],
                              errors=errors, seconds=time.perf_counter() - start)


def plot_highway_error(result: HighwayErrorResult, others: tuple[HighwayErrorResult, ...] = ()):
    """The chosen configuration's e_l against depth, the ``others`` (same bits, other skips) faintly."""
    fig, ax = new_figure(figsize=(9, 3.4))
    depth = range(1, len(result.blocks) + 1)
    for other in others:
        ax.plot(depth, other.errors, marker="o", ms=3, lw=1, color=COLORS[other.skip], alpha=0.35,
                label=f"skip: {other.skip}")
    ax.plot(depth, result.errors, marker="o", ms=5, lw=2.5, color=COLORS[result.skip], label=f"skip: {result.skip}")
    ax.set_xticks(list(depth))
    ax.set_xticklabels(result.blocks, rotation=30, fontsize=8)
    ax.set_xlabel("block output")
    ax.set_ylabel(r"relative error $e_\ell$")
    ax.set_ylim(0, None)
    ax.set_title(f"W{result.bits}A{result.bits} residual branches: the error accumulates with depth", fontsize=10)
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    fig.tight_layout()
    return fig


def render_highway_error(model: nn.Module, calib_images: torch.Tensor, probe: torch.Tensor, bits: int, skip: str,
                         cache: dict | None = None, device: str = "cpu"):
    """(figure, summary), or (None, "Error: ...") for invalid controls: what the panel shows.

    All three skips at ``bits`` are needed (the chosen one and the faint comparison); ``cache`` maps
    (bits, skip) to results already computed, and receives the new ones. The last summary line says how
    many configurations were computed now, and in how many seconds.
    """
    cache = {} if cache is None else cache
    try:
        order = [skip] + [s for s in SKIPS if s != skip]  # an unknown skip raises at the first one
        new = []
        for s in order:
            if (bits, s) not in cache:
                result = highway_error(model, calib_images, probe, bits, s, device)
                cache[(bits, s)] = result
                new.append(result)
        results = [cache[(bits, s)] for s in order]
        timing = (f"computed {len(new)} new configuration(s) in {sum(r.seconds for r in new):.1f} s" if new
                  else "all from the cache")
        return plot_highway_error(results[0], tuple(results[1:])), f"{results[0].summary()}\n{timing}"
    except MpqlabError as err:
        return None, f"Error: {err}"


def highway_error_panel(model: nn.Module, calib_images: torch.Tensor, probe: torch.Tensor, bits: int = 3,
                        skip: str = "same bits", device: str = "cpu"):
    """A bits slider and a skip toggle, redrawing ``render_highway_error``; computed configurations are kept."""
    import ipywidgets as widgets
    from IPython.display import display

    cache: dict = {}  # (bits, skip) -> HighwayErrorResult: moving back to a setting costs nothing
    bits_slider = widgets.IntSlider(value=bits, min=MIN_BITS, max=MAX_BITS, description="bits",
                                    continuous_update=False)
    skip_buttons = widgets.ToggleButtons(options=list(SKIPS), value=skip, description="skip")

    def update(bits, skip):
        fig, text = render_highway_error(model, calib_images, probe, bits, skip, cache, device)
        show_result(fig, text)

    out = widgets.interactive_output(update, {"bits": bits_slider, "skip": skip_buttons})
    display(widgets.VBox([widgets.HBox([bits_slider, skip_buttons]), out]))
