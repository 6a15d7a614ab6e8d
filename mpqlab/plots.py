"""Plot helpers shared by the notebooks. Each returns the matplotlib Figure it drew."""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from mpqlab.errors import UsageError

# One colour per layer kind, the same in every notebook.
KIND_COLORS = {"conv": "#4C72B0", "depthwise": "#DD8452", "pointwise": "#55A868", "linear": "#8172B3"}


def new_figure(nrows: int = 1, ncols: int = 1, figsize=(6.4, 4.8), **subplot_kw):
    """``(figure, axes)`` like ``plt.subplots``, but the figure is not registered with pyplot.

    Widget callbacks may run on a kernel thread other than the main one (ipykernel 7 subshells), and
    pyplot's global "current figure" is not thread-safe: a figure drawn through it can come out blank.
    A free-standing ``Figure`` has no shared state, and it is garbage-collected once it is shown.
    """
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **subplot_kw)


def figure_png(fig, dpi: int = 100, tight: bool = True) -> bytes:
    """The figure rendered to PNG bytes (what a widget puts on screen).

    ``tight`` trims the white border, at the price of one more layout pass; a figure with fixed
    margins (``fig.subplots_adjust``) can skip it when it must redraw fast.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight" if tight else None, facecolor="white")
    return buffer.getvalue()


def show_figure(fig, dpi: int = 100, tight: bool = True) -> None:
    """Display a figure made by ``new_figure`` in the notebook (works from a widget callback too)."""
    from IPython.display import Image, display

    display(Image(data=figure_png(fig, dpi, tight), format="png"))


def image_grid(images, labels, class_names, rows: int = 3, cols: int = 10, predictions=None):
    """A grid of grey images titled with their class (and the prediction, red when wrong)."""
    from mpqlab.data import unnormalize

    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.5 * rows))
    pixels = unnormalize(images[: rows * cols])
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= len(pixels):
            continue
        ax.imshow(pixels[i, 0], cmap="gray_r", vmin=0, vmax=1)
        title = class_names[int(labels[i])]
        color = "black"
        if predictions is not None and int(predictions[i]) != int(labels[i]):
            title, color = f"{class_names[int(predictions[i])]}?", "crimson"
        ax.set_title(title, fontsize=8, color=color)
    fig.tight_layout()
    return fig


def kind_handles(kinds) -> tuple[list, list[str]]:
    """``(handles, labels)``: one legend swatch per layer kind present in ``kinds``, in ``KIND_COLORS`` order.

    For figures whose bars are coloured by layer kind (``macs_bar``; notebook 01's per-layer errors)."""
    present = set(kinds)
    unknown = present - set(KIND_COLORS)
    if unknown:
        raise UsageError(f"unknown layer kind(s) {sorted(unknown)}; known: {list(KIND_COLORS)}")
    names = [k for k in KIND_COLORS if k in present]
    return [plt.Rectangle((0, 0), 1, 1, color=KIND_COLORS[k]) for k in names], names


def macs_bar(table, title: str = "", ax=None, log: bool = False):
    """Bar chart of MACs per layer, coloured by kind (conv / depthwise / pointwise / linear)."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(table)), 3.2))
    colors = [KIND_COLORS[k] for k in table.kind]
    ax.bar(range(len(table)), table.macs / 1e6, color=colors, log=log)
    ax.set_xticks(range(len(table)))
    ax.set_xticklabels([n.removesuffix(".conv") for n in table.index], rotation=90, fontsize=7)
    ax.set_ylabel("MACs (millions)")
    ax.set_title(title, loc="right")
    ax.legend(*kind_handles(table.kind), fontsize=8, frameon=False, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=4)
    ax.figure.tight_layout()
    return ax.figure
