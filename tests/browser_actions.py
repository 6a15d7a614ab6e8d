"""What the browser test does with each notebook's widgets, and what it expects to see change.

`tests/test_browser.py` runs every notebook in JupyterLab. For a notebook listed in `ACTIONS` it then
works the listed controls one after another, like a student would, and after each one checks that the
output shown with the control changed (printed text, table or plot image), that it shows no traceback
or blank plot, and that the numbers named in `expect` moved the stated way. "Shown with the control"
is the output inside the same displayed widget (a panel of controls and an Output), or the whole cell
when the controls and their output are displayed separately.

A control is found by its description, the label ipywidgets shows beside it (`description="bits"`),
within the whole notebook. If two controls of the same kind share a description, `nth` picks one
(0 = first from the top); otherwise the test refuses to guess.

A notebook that shows sliders, check boxes, drop-downs or buttons but has no entry here fails: every
interactive notebook must be worked by the test at least once (one slider and one other control).

Numbers are read from that output's text (stdout, text and HTML outputs, not the controls' own
read-outs), with a regular expression whose first group is the number, matched line by line
(`^` and `$` anchor at line ends). Widget authors: print a summary in a fixed format on every
update, like `mpqlab.widgets.search_panel` does:

    BitOps: 3064.53 M (budget 3066.80 M), avg w_bits: 4.74, avg a_bits: 3.74, size: 0.603 MB, ...
    bit-widths in policy: [2, 3, 4, 5]
"""

from __future__ import annotations

from dataclasses import dataclass

RELATIONS = ("decreases", "increases", "changes", "present", "absent")


@dataclass(frozen=True)
class Expect:
    """A property of the cell's printed text after an action, compared with before it."""

    pattern: str  # regex; for the number relations its first group is a number
    relation: str  # one of RELATIONS; "present"/"absent" look only at the text after the action

    def __post_init__(self):
        if self.relation not in RELATIONS:
            raise ValueError(f"relation {self.relation!r} is not one of {RELATIONS}")


@dataclass(frozen=True)
class Slider:
    """Focus the slider's handle and press an arrow key: each press moves it by one step."""

    label: str
    key: str = "ArrowLeft"  # ArrowLeft/ArrowDown lower the value, ArrowRight/ArrowUp raise it
    presses: int = 3
    expect: tuple[Expect, ...] = ()
    nth: int | None = None


@dataclass(frozen=True)
class Checkbox:
    """Click the check box once (ticks it if unticked, unticks it if ticked)."""

    label: str
    expect: tuple[Expect, ...] = ()
    nth: int | None = None


@dataclass(frozen=True)
class Dropdown:
    """Choose `option` (its visible text) in the drop-down."""

    label: str
    option: str
    expect: tuple[Expect, ...] = ()
    nth: int | None = None


@dataclass(frozen=True)
class ToggleButtons:
    """Click the button showing `option` in a ToggleButtons or RadioButtons-like row of buttons."""

    label: str
    option: str
    expect: tuple[Expect, ...] = ()
    nth: int | None = None


@dataclass(frozen=True)
class Button:
    """Click a button whose text is `label` (for example "run search")."""

    label: str
    expect: tuple[Expect, ...] = ()
    nth: int | None = None


Action = Slider | Checkbox | Dropdown | ToggleButtons | Button

# A number as Python prints it: 3, -0.25, 1.2e-05.
NUMBER = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"

# notebook file name without .ipynb -> the actions, in order. Each action starts from the state the
# previous one left behind.
ACTIONS: dict[str, list[Action]] = {
    # mpqlab.widgets.quantizer_explorer: "tensor" and "calibration" drop-downs, a "bits" slider, "scheme" and
    # "granularity" toggle buttons; each redraw prints "MSE: 1.234e-05, levels used: 15 of 16, clip: ...".
    "01_uniform_quantization": [
        Slider(
            "bits",
            key="ArrowRight",
            presses=2,
            expect=(Expect(rf"levels used: \d+ of {NUMBER}", "increases"), Expect(rf"^MSE: {NUMBER}", "decreases")),
        ),
        ToggleButtons("granularity", "per-channel", expect=(Expect(rf"^MSE: {NUMBER}", "decreases"),)),
        Dropdown("calibration", "MSE", expect=(Expect(rf"^MSE: {NUMBER}", "changes"),)),
    ],
    # mpqlab.widgets.log_grid: "bits" and "fsr" sliders and a "base" drop-down; each redraw prints
    # "MSE: 1.234e-05, linear MSE: ..., levels used: 9 of 16, to zero: 1.2%, clipped: 0.00%".
    "02_log_quantization": [
        Slider(
            "bits",
            key="ArrowRight",
            presses=1,
            expect=(Expect(rf"levels used: \d+ of {NUMBER}", "increases"), Expect(rf"^MSE: {NUMBER}", "decreases")),
        ),
        Dropdown("base", "sqrt(2)", expect=(Expect(rf"^MSE: {NUMBER}", "changes"),)),
    ],
    # mpqlab.widgets.weighted_entropy_grid: a "tensor" drop-down, a "bits" slider and "method" toggle buttons
    # (weighted entropy / equal population / linear); each redraw prints "levels: 8 (4 magnitudes, mirrored)",
    # "weighted entropy S: 1.2345e-02", "MSE: 1.2345e-04", "finest gap: ...". Weighted entropy maximises S,
    # so switching to linear lowers it.
    "03_weighted_entropy": [
        Slider(
            "bits",
            key="ArrowRight",
            presses=1,
            expect=(Expect(rf"^levels: {NUMBER}", "increases"), Expect(rf"^MSE: {NUMBER}", "decreases")),
        ),
        ToggleButtons("method", "linear", expect=(Expect(rf"^weighted entropy S: {NUMBER}", "decreases"),)),
    ],
    # mpqlab.widgets.outlier: a "tensor" drop-down, "bits" and "outliers %" sliders; each redraw prints
    # "MSE: 1.234e-05, linear MSE: ... (3.1x), outliers: 123 (1.00%), threshold: ..., step: ...".
    "04_outlier_aware": [
        Slider("outliers %", key="ArrowRight", presses=5, expect=(Expect(rf"outliers: {NUMBER}", "increases"),)),
        Dropdown("tensor", "input activations of pw7.conv", expect=(Expect(rf"^MSE: {NUMBER}", "changes"),)),
    ],
    # mpqlab.widgets.highway_error: a "bits" slider (2..8) and "skip" toggle buttons (same bits / 8-bit / float);
    # each redraw prints "W3A3 branches, skip: same bits", "error after the first block: 0.2318",
    # "error after the last block: 0.4761" and how many configurations it computed (three per new bits value).
    "05_precision_highway": [
        Slider(
            "bits",
            key="ArrowLeft",
            presses=1,
            expect=(Expect(rf"^error after the last block: {NUMBER}", "increases"),),
        ),
        ToggleButtons("skip", "float", expect=(Expect(rf"^error after the last block: {NUMBER}", "decreases"),)),
    ],
    # mpqlab.widgets.lsq_transfer: "bits" and "step size s" sliders and a "grid" toggle; each redraw prints
    # "levels: 15, step: 0.100, clip range: [-0.800, 0.700]".
    "06_learnable_quantizers": [
        Slider("bits", key="ArrowRight", presses=1, expect=(Expect(rf"^levels: {NUMBER}", "increases"),)),
        ToggleButtons("grid", "unsigned (after ReLU)", expect=(Expect(rf"clip range: \[{NUMBER}", "increases"),)),
    ],
    # mpqlab.widgets.search_panel: a "model" drop-down, a "BitOps budget" slider (in M) and one check box per bit-width; each
    # solve prints "BitOps: 12.34 M (budget 13.00 M), avg w_bits: ...", "bit-widths in policy: [2, 3, 4]"
    # and "equivalent uniform bit-width: 3.41" (sqrt(BitOps / MACs), the MAC-weighted mean bit-width).
    "10_limpq_search": [
        Slider(
            "BitOps budget",
            key="ArrowLeft",
            presses=5,
            expect=(
                Expect(rf"\(budget {NUMBER} M\)", "decreases"),
                Expect(rf"^BitOps: {NUMBER} M", "decreases"),
                Expect(rf"^equivalent uniform bit-width: {NUMBER}", "decreases"),
            ),
        ),
        Checkbox("6 bits", expect=(Expect(r"^bit-widths in policy: \[.*\b6\b", "absent"),)),
        # the "model" drop-down: the paper's ResNet-50 starts at its recipe and prints whether the policy is
        # the published one ("published policy: reproduced ...") under the summary
        Dropdown(
            "model",
            "ResNet-50 (paper)",
            expect=(Expect(r"^published policy: reproduced", "present"), Expect(rf"^BitOps: {NUMBER} M", "increases")),
        ),
    ],
}
