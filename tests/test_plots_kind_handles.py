"""Legend swatches for bars coloured by layer kind (notebook 01's per-layer error figure, macs_bar)."""

import matplotlib

matplotlib.use("Agg")

import pytest
from matplotlib.colors import to_rgba

from mpqlab.errors import UsageError
from mpqlab.plots import KIND_COLORS, kind_handles, macs_bar


def test_one_swatch_per_kind_present_in_colour_order():
    handles, names = kind_handles(["pointwise", "conv", "depthwise", "pointwise"])
    assert names == ["conv", "depthwise", "pointwise"]
    assert [h.get_facecolor() for h in handles] == [to_rgba(KIND_COLORS[k]) for k in names]


def test_unknown_kind_is_a_usage_error_naming_it():
    with pytest.raises(UsageError, match="attention"):
        kind_handles(["conv", "attention"])


def test_macs_bar_legend_names_every_kind():
    import pandas as pd

    table = pd.DataFrame({"kind": ["conv", "depthwise", "pointwise", "linear"], "macs": [1e6, 2e5, 3e6, 1e4]},
                         index=["conv1.conv", "dw1.conv", "pw1.conv", "fc"])
    fig = macs_bar(table)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["conv", "depthwise", "pointwise", "linear"]
