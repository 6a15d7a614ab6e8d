import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from mpqlab.errors import BitWidthError, PolicyError, QuantParamError, TensorValueError  # noqa: E402
from mpqlab.highway import highway_resnet, relative_errors  # noqa: E402
from mpqlab.models import mobilenet_v1_small, resnet20  # noqa: E402
from mpqlab.quant.ptq import calibrate  # noqa: E402
from mpqlab.widgets import highway_error as hw  # noqa: E402
from mpqlab.widgets.highway_error import (  # noqa: E402
    SKIPS, highway_error, highway_error_panel, plot_highway_error, render_highway_error, skip_bits,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = resnet20().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so that blocks differ from one another
        for bn in (mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)):
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
    return m


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 1, 32, 32, generator=g), torch.randn(4, 1, 32, 32, generator=g)  # calibration, probe


def test_skip_labels_map_to_skip_bits():
    assert [skip_bits(s, 3) for s in SKIPS] == [3, 8, None]
    with pytest.raises(QuantParamError, match="'4-bit'"):
        skip_bits("4-bit", 3)


@pytest.mark.parametrize("skip", list(SKIPS))
def test_errors_match_a_direct_computation(model, images, skip):
    calib, probe = images
    r = highway_error(model, calib, probe, 3, skip)
    direct = relative_errors(model, calibrate(highway_resnet(model, 3, skip_bits(skip, 3)), calib), probe)
    assert r.errors == pytest.approx(direct, rel=1e-6)
    assert len(r.errors) == len(r.blocks) == 9 and r.blocks[0] == "layer1.0" and r.blocks[-1] == "layer3.2"
    assert r.seconds > 0
    lines = r.summary().splitlines()
    assert lines == [f"W3A3 branches, skip: {skip}", f"error after the first block: {r.errors[0]:.4f}",
                     f"error after the last block: {r.errors[-1]:.4f}"]


def test_at_8_bits_same_bits_is_the_8_bit_highway_and_more_bits_help(model, images):
    calib, probe = images
    same, eight = highway_error(model, calib, probe, 8, "same bits"), highway_error(model, calib, probe, 8, "8-bit")
    assert same.errors == eight.errors
    low = highway_error(model, calib, probe, 2, "float")
    assert low.errors[-1] > 5 * eight.errors[-1]  # 2-bit branches are far worse than 8-bit ones


@pytest.mark.parametrize("bits,skip,err", [(1, "float", BitWidthError), (9, "float", BitWidthError),
                                           (3.5, "float", BitWidthError), (3, "4-bit", QuantParamError)])
def test_bad_controls_raise_and_render_as_a_message(model, images, bits, skip, err):
    with pytest.raises(err):
        highway_error(model, *images, bits, skip)
    fig, text = render_highway_error(model, *images, bits, skip)
    assert fig is None and text.startswith("Error: ")


def test_bad_model_or_images(images):
    calib, probe = images
    with pytest.raises(PolicyError):
        highway_error(mobilenet_v1_small(), calib, probe, 3, "float")
    with pytest.raises(TensorValueError):
        highway_error(resnet20(), calib[:0], probe, 3, "float")
    fig, text = render_highway_error(resnet20(), calib, probe[:0], 3, "float")
    assert fig is None and "empty" in text
    fig, text = render_highway_error(resnet20(), torch.full_like(calib, float("nan")), probe, 3, "float")
    assert fig is None and "NaN" in text


def test_render_computes_each_configuration_once(model, images, monkeypatch):
    calls = []
    real = hw.highway_error

    def counting(*args):
        calls.append(args[3:5])
        return real(*args)

    monkeypatch.setattr(hw, "highway_error", counting)
    cache = {}
    fig, text = render_highway_error(model, *images, 3, "float", cache)
    assert calls == [(3, "float"), (3, "same bits"), (3, "8-bit")]  # the chosen one first, then the faint ones
    assert set(cache) == {(3, s) for s in SKIPS}
    assert text.splitlines()[:3] == cache[(3, "float")].summary().splitlines()
    assert text.splitlines()[-1].startswith("computed 3 new configuration(s) in ")
    before = plt.get_fignums()
    fig, text = render_highway_error(model, *images, 3, "same bits", cache)
    assert len(calls) == 3 and text.splitlines()[-1] == "all from the cache"
    assert fig is not None and plt.get_fignums() == before  # drawn outside pyplot
    assert len(fig.axes[0].get_lines()) == 3


def test_plot_draws_the_chosen_curve_boldest(model, images):
    results = [highway_error(model, *images, 4, s) for s in SKIPS]
    fig = plot_highway_error(results[1], (results[0], results[2]))
    lines = fig.axes[0].get_lines()
    assert list(lines[-1].get_ydata()) == results[1].errors and lines[-1].get_linewidth() > lines[0].get_linewidth()


def test_panel_wires_the_controls_and_caches(model, images, monkeypatch):
    import ipywidgets as widgets

    shown, calls = [], []
    monkeypatch.setattr("IPython.display.display", lambda *objs: shown.extend(objs))

    def fake_render(model_, calib, probe, bits, skip, cache, device):  # no computing: this test is about the wiring
        calls.append((bits, skip, id(cache)))
        return None, "Error: stub"

    monkeypatch.setattr(hw, "render_highway_error", fake_render)
    highway_error_panel(model, *images, bits=3, skip="float")
    box = next(obj for obj in shown if isinstance(obj, widgets.VBox))
    controls = {c.description: c for c in box.children[0].children}
    assert set(controls) == {"bits", "skip"} and not controls["bits"].continuous_update
    assert (controls["bits"].min, controls["bits"].max) == (2, 8)
    assert isinstance(controls["skip"], widgets.ToggleButtons) and list(controls["skip"].options) == list(SKIPS)
    assert calls[-1][:2] == (3, "float")
    assert any("Error: stub" in getattr(obj, "data", "") for obj in shown)  # the message, not a traceback
    controls["bits"].value = 2
    controls["skip"].value = "same bits"
    assert calls[-1][:2] == (2, "same bits")
    assert len({c[2] for c in calls}) == 1  # one cache for the panel's lifetime


@pytest.mark.parametrize("bad, which", [
    (torch.randn(2, 3, 32, 32), "calib_images"),  # three channels for a one-channel model
    (torch.randn(2, 1024), "probe"),  # flattened images
    (torch.ones(2, 1, 32, 32, dtype=torch.int64), "probe"),  # integer pixels
])
def test_images_that_do_not_fit_the_model_are_a_message(model, images, bad, which):
    """These used to reach conv2d and raise torch's RuntimeError instead of a message."""
    calib, probe = (bad, images[1]) if which == "calib_images" else (images[0], bad)
    with pytest.raises(TensorValueError, match=rf"{which} must be a floating-point batch \(N, 1, H, W\)"):
        highway_error(model, calib, probe, 3, "float")
    fig, text = render_highway_error(model, calib, probe, 3, "float")
    assert fig is None and text.startswith("Error: ") and str(tuple(bad.shape)) in text


def test_panel_shows_bad_images_as_a_red_message(model, images, monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda *objs: shown.extend(objs))
    highway_error_panel(model, torch.randn(2, 3, 32, 32), images[1])  # the real render, through the callback
    assert any("calib_images must be" in getattr(obj, "data", "") and "#c0392b" in obj.data for obj in shown)
