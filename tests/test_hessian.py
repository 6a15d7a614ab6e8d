"""The Hessian-trace criterion: Hutchinson against the exact trace, chunking, stopping, negative traces, errors."""

import json
import math

import pytest
import torch
from torch import nn

import mpqlab.limpq.hessian as hessian
from mpqlab.errors import MpqlabError, PolicyError, UsageError
from mpqlab.limpq.hessian import TraceEstimate, hessian_indicators, hutchinson_traces, quant_error
from mpqlab.models import mobilenet_v1_small


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3)
        self.conv2 = nn.Conv2d(2, 3, 1)
        self.fc = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x):  # (N, 1, 6, 6)
        return self.fc(torch.tanh(self.conv2(torch.tanh(self.conv1(x)))).flatten(1))


def tiny_problem(n=8):
    torch.manual_seed(0)
    model = Tiny().double()
    return model, torch.randn(n, 1, 6, 6, dtype=torch.float64), torch.randint(0, 4, (n,))


def exact_hessian(model, x, y):
    """The full Hessian of the mean CE wrt (conv2's weight, conv2's input over all images), and the sizes."""
    def loss_of(w, a):
        logits = model.fc(torch.tanh(nn.functional.conv2d(a, w, model.conv2.bias)).flatten(1))
        return nn.functional.cross_entropy(logits, y)

    w0, a0 = model.conv2.weight.detach().clone(), torch.tanh(model.conv1(x)).detach()
    blocks = torch.autograd.functional.hessian(loss_of, (w0, a0))
    nw, na = w0.numel(), a0.numel()
    h = torch.cat([torch.cat([blocks[0][0].reshape(nw, nw), blocks[0][1].reshape(nw, na)], 1),
                   torch.cat([blocks[1][0].reshape(na, nw), blocks[1][1].reshape(na, na)], 1)])  # (nw + na, nw + na)
    return h, w0, a0


def test_hutchinson_samples_are_v_h_v_with_the_exact_hessian():
    model, x, y = tiny_problem()
    probes = 50
    est = hutchinson_traces(model, ["conv2"], x, y, min_probes=probes, max_probes=probes, chunk_size=3, progress=False)
    assert est.activations["conv2"].shape == (8, 2, 4, 4) and est.probes == probes and est.images == 8
    h, w0, a0 = exact_hessian(model, x, y)
    nw = w0.numel()
    # one probe v over weights and activations together (drawn in that order), as the estimator does:
    # E[v_w^T (H v)_w] = Tr(H_ww), the cross terms average out
    gen = torch.Generator().manual_seed(0)
    for j in range(probes):
        v = torch.cat([torch.randint(0, 2, w0.shape, generator=gen).double().flatten(),
                       torch.randint(0, 2, a0.shape, generator=gen).double().flatten()]) * 2 - 1
        hv = h @ v
        assert est.weight["conv2"].samples[j] == pytest.approx(float(v[:nw] @ hv[:nw]), rel=1e-8)
        assert est.act["conv2"].samples[j] == pytest.approx(float(v[nw:] @ hv[nw:]), rel=1e-8)


def test_chunking_does_not_change_the_samples():
    model, x, y = tiny_problem(n=10)
    runs = [hutchinson_traces(model, ["conv1", "conv2", "fc"], x, y, min_probes=4, max_probes=4, chunk_size=c,
                              progress=False) for c in (10, 4, 1)]  # one chunk, uneven chunks, one image each
    for other in runs[1:]:
        for name in ("conv1", "conv2", "fc"):
            assert other.weight[name].samples == pytest.approx(runs[0].weight[name].samples, rel=1e-10)
            assert other.act[name].samples == pytest.approx(runs[0].act[name].samples, rel=1e-10)
            assert torch.equal(other.activations[name], runs[0].activations[name])


class Mlp(nn.Module):
    """CE is convex in the logits and the logits are linear in fc2's weight and input: both traces > 0."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):  # (N, 5)
        return self.fc2(torch.tanh(self.fc1(x)))


def mlp_problem(n=64):
    torch.manual_seed(0)
    return Mlp().double(), torch.randn(n, 5, dtype=torch.float64), torch.randint(0, 3, (n,))


def test_converged_estimate_is_within_a_few_se_of_the_exact_trace():
    model, x, y = mlp_problem()
    est = hutchinson_traces(model, ["fc2"], x, y, min_probes=20, max_probes=2000, target_rse=0.05, chunk_size=20,
                            progress=False)
    assert est.converged and est.probes < 2000

    def loss_of(w, a):
        return nn.functional.cross_entropy(nn.functional.linear(a, w, model.fc2.bias), y)

    a0 = torch.tanh(model.fc1(x)).detach()
    h_ww, _, _, h_aa = (b for row in torch.autograd.functional.hessian(loss_of, (model.fc2.weight.detach(), a0))
                        for b in row)
    exact_w = float(h_ww.reshape(18, 18).trace())
    exact_a = float(h_aa.reshape(a0.numel(), a0.numel()).trace())
    for got, exact in ((est.weight["fc2"], exact_w), (est.act["fc2"], exact_a)):
        assert got.rse < 0.05
        assert abs(got.mean - exact) < 4 * got.se


def test_stops_at_the_first_probe_meeting_the_target():
    model, x, y = mlp_problem()
    target = 0.1
    est = hutchinson_traces(model, ["fc2"], x, y, min_probes=3, max_probes=500, target_rse=target,
                            progress=False)
    traces = list(est.weight.values()) + list(est.act.values())
    assert est.converged and 3 < est.probes < 500
    assert all(len(t.samples) == est.probes for t in traces)

    def worst_rse(m):
        return max(TraceEstimate(t.samples[:m]).rse for t in traces)

    assert worst_rse(est.probes) < target
    assert all(worst_rse(m) >= target for m in range(3, est.probes))  # not one probe later than needed


def test_runs_to_max_probes_when_the_target_is_out_of_reach():
    model, x, y = tiny_problem()
    est = hutchinson_traces(model, ["conv2"], x, y, min_probes=2, max_probes=6, target_rse=1e-9, progress=False)
    assert est.probes == 6 and not est.converged
    easy = hutchinson_traces(model, ["conv2"], x, y, min_probes=5, max_probes=50, target_rse=1e9, progress=False)
    assert easy.probes == 5 and easy.converged


def test_trace_estimate_statistics():
    t = TraceEstimate([-1.0, -3.0, -2.0, -2.0])
    assert t.mean == -2.0 and t.negative and t.probes == 4
    assert t.se == pytest.approx(math.sqrt(2 / 3 / 4))
    assert t.rse == pytest.approx(t.se / 2)
    assert TraceEstimate([5.0, 5.0]).rse == 0.0  # every probe agrees: nothing left to estimate
    assert TraceEstimate([1.0, -1.0]).rse == math.inf


def test_negative_traces_are_kept_and_omega_uses_their_magnitude(monkeypatch):
    torch.manual_seed(0)
    model = mobilenet_v1_small().eval()
    x, y = torch.randn(2, 1, 32, 32), torch.randint(0, 10, (2,))
    real = hutchinson_traces

    def with_one_negative(*args, **kwargs):
        est = real(*args, **kwargs)
        est.weight["dw1.conv"].samples = [-abs(s) for s in est.weight["dw1.conv"].samples]
        est.act["pw2.conv"].samples = [-abs(s) for s in est.act["pw2.conv"].samples]
        return est

    monkeypatch.setattr(hessian, "hutchinson_traces", with_one_negative)
    ind, traces = hessian_indicators(model, x, y, min_probes=2, max_probes=2, progress=False)
    assert traces["negative_rule"] == "abs"
    assert "dw1.conv" in traces["negative_weight_layers"] and "pw2.conv" in traces["negative_act_layers"]
    w_trace = traces["weight_trace"]["dw1.conv"]
    assert w_trace < 0 and traces["weight_trace_se"]["dw1.conv"] > 0  # kept as measured, with its SE
    w = model.dw1.conv.weight
    for b in (2, 4):  # Omega = |Tr| / n * ||Q_b(W) - W||^2, not clipped to 0
        want = abs(w_trace) / w.numel() * quant_error(w, b, True)
        assert ind.weight_indicators["dw1.conv"][b] == pytest.approx(want, rel=1e-12) and want > 0
    assert all(v > 0 for v in ind.act_indicators["pw2.conv"].values())


def test_quant_error_falls_with_bits_and_vanishes_on_the_grid():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    errors = [quant_error(x, b, True) for b in (2, 3, 4, 5, 6)]
    assert all(a > b for a, b in zip(errors, errors[1:]))
    grid = torch.tensor([0.0, 1.0, 2.0, 3.0])  # unsigned 2-bit min-max grid of [0, 3]
    assert quant_error(grid, 2, False) == pytest.approx(0.0, abs=1e-12)
    assert quant_error(torch.zeros(5), 3, True) == 0.0


def test_indicators_cover_the_searchable_layers_and_never_go_negative():
    torch.manual_seed(0)
    model = mobilenet_v1_small().eval()
    x, y = torch.randn(4, 1, 32, 32), torch.randint(0, 10, (4,))
    ind, traces = hessian_indicators(model, x, y, min_probes=2, max_probes=2, chunk_size=3, progress=False)
    assert ind.layer_names[0] == "dw1.conv" and len(ind.layer_names) == 26
    assert set(ind.fixed_layers) == {"conv1.conv", "fc"}
    for n in ind.layer_names:
        for table in (ind.weight_indicators, ind.act_indicators):
            values = [table[n][b] for b in (2, 3, 4, 5, 6)]
            assert all(v >= 0 for v in values)
            assert all(a >= b for a, b in zip(values, values[1:]))  # more bits, less (or equal) damage
    assert {"weight_trace", "weight_trace_se", "act_trace", "act_trace_se", "probes", "images", "negative_rule",
            "negative_weight_layers", "negative_act_layers", "seconds"} <= set(traces)
    assert traces["probes"] == 2 and traces["images"] == 4
    assert json.loads(json.dumps(traces, allow_nan=False)) == traces


@pytest.mark.parametrize("kwargs, named", [
    ({"min_probes": 1}, "min_probes"),
    ({"min_probes": 2.5}, "min_probes"),
    ({"min_probes": 5, "max_probes": 4}, "max_probes"),
    ({"target_rse": 0.0}, "target_rse"),
    ({"target_rse": -0.1}, "target_rse"),
    ({"target_rse": float("nan")}, "target_rse"),
    ({"chunk_size": 0}, "chunk_size"),
])
def test_bad_arguments_raise_usage_errors_naming_them(kwargs, named):
    model, x, y = tiny_problem()
    with pytest.raises(UsageError, match=named):
        hutchinson_traces(model, ["conv2"], x, y, progress=False, **kwargs)


def test_bad_data_and_layers_raise_specific_errors():
    model, x, y = tiny_problem()
    with pytest.raises(UsageError, match="8 images and 7 labels"):
        hutchinson_traces(model, ["conv2"], x, y[:7], progress=False)
    with pytest.raises(UsageError, match="at least 1 image"):
        hutchinson_traces(model, ["conv2"], x[:0], y[:0], progress=False)
    with pytest.raises(PolicyError, match="conv9"):
        hutchinson_traces(model, ["conv2", "conv9"], x, y, progress=False)
    with pytest.raises(MpqlabError, match="chunk_size"):
        hessian_indicators(mobilenet_v1_small(), torch.randn(2, 1, 32, 32), torch.zeros(2, dtype=torch.long),
                           chunk_size=0, progress=False)
