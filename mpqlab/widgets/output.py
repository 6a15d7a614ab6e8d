"""What every panel shows after a change: the summary text and the figure, or the error in red.

Kept in one place so that all panels behave alike, and so that no panel touches pyplot from a
widget callback (see ``mpqlab.plots.new_figure`` for why).
"""

from __future__ import annotations

import html

from mpqlab.plots import show_figure


def show_error(text: str) -> None:
    """The message in red, instead of a traceback."""
    from IPython.display import HTML, display

    display(HTML(f'<pre style="color:#c0392b">{html.escape(text)}</pre>'))


def show_result(fig, text: str) -> None:
    """``fig is None`` means ``text`` is an error message (what the ``render_*`` functions return).

    ``fig`` is a matplotlib figure, or a PNG already rendered (bytes)."""
    if fig is None:
        show_error(text)
        return
    print(text)
    if isinstance(fig, bytes):
        from IPython.display import Image, display

        display(Image(data=fig, format="png"))
    else:
        show_figure(fig)
