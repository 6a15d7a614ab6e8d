"""The Hessian-trace criterion: Hutchinson against the exact trace, quantization error, indicator shape."""

import pytest
import torch
from torch import nn

from mpqlab.limpq.hessian import hessian_indicators, hutchinson_traces, quant_error
from mpqlab.models import mobilenet_v1_small


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3)
        self.conv2 = nn.Conv2d(2, 3, 1)
        self.fc = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x):  # (N, 1, 6, 6)
        return self.fc(torch.tanh(self.conv2(torch.tanh(self.conv1(x)))).flatten(1))


def test_hutchinson_is_the_mean_of_v_h_v_with_the_exact_hessian():
    torch.manual_seed(0)
    model = Tiny().double()
    x, y = torch.randn(8, 1, 6, 6, dtype=torch.float64), torch.randint(0, 4, (8,))
    probes = 50
    w_trace, a_trace, acts = hutchinson_traces(model, ["conv2"], x, y, probes=probes, seed=0)
    assert acts["conv2"].shape == (8, 2, 4, 4)

    def loss_of(w, a):  # the loss as a function of conv2's weight and of its input activations
        return nn.functional.cross_entropy(model.fc(torch.tanh(nn.functional.conv2d(a, w, model.conv2.bias)).flatten(1)), y)

    w0, a0 = model.conv2.weight.detach().clone(), torch.tanh(model.conv1(x)).detach()
    blocks = torch.autograd.functional.hessian(loss_of, (w0, a0))
    nw, na = w0.numel(), a0.numel()
    h = torch.cat([torch.cat([blocks[0][0].reshape(nw, nw), blocks[0][1].reshape(nw, na)], 1),
                   torch.cat([blocks[1][0].reshape(na, nw), blocks[1][1].reshape(na, na)], 1)])  # (nw + na, nw + na)
    # one probe v over weights and activations together (drawn in that order), as the estimator does:
    # E[v_w^T (H v)_w] = Tr(H_ww), the cross terms average out
    gen = torch.Generator().manual_seed(0)
    est_w = est_a = 0.0
    for _ in range(probes):
        v = torch.cat([torch.randint(0, 2, w0.shape, generator=gen).double().flatten(),
                       torch.randint(0, 2, a0.shape, generator=gen).double().flatten()]) * 2 - 1
        hv = h @ v
        est_w += float(v[:nw] @ hv[:nw])
        est_a += float(v[nw:] @ hv[nw:])
    assert w_trace["conv2"] == pytest.approx(est_w / probes, rel=1e-8)
    assert a_trace["conv2"] == pytest.approx(est_a / probes, rel=1e-8)


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
    ind, traces = hessian_indicators(model, x, y, probes=1)
    assert ind.layer_names[0] == "dw1.conv" and len(ind.layer_names) == 26
    assert set(ind.fixed_layers) == {"conv1.conv", "fc"}
    for n in ind.layer_names:
        for table in (ind.weight_indicators, ind.act_indicators):
            values = [table[n][b] for b in (2, 3, 4, 5, 6)]
            assert all(v >= 0 for v in values)
            assert all(a >= b for a, b in zip(values, values[1:]))  # more bits, less (or equal) damage
    assert set(traces) == {"weight_trace", "act_trace"}
