import pytest
import torch
from torch.distributions import Normal, kl_divergence

from mpqlab.errors import PolicyError, QuantParamError
from mpqlab.models.mobilenet_v3 import mobilenet_v3_small_fmnist
from mpqlab.profit import (aiwq, aiwq_step, bn_fluctuation, bn_only, bn_running_means, build_profit_model,
                           freeze_layers, gaussian_kl, layers_to_freeze, quant_layers)
from mpqlab.quant.hswish_shift import ShiftedActQuantizer


@pytest.fixture(scope="module")
def qmodel_and_batch():
    torch.manual_seed(0)
    images, labels = torch.randn(4, 1, 16, 16), torch.randint(0, 10, (4,))  # small: the net pools any size
    qmodel = build_profit_model(mobilenet_v3_small_fmnist().eval(), 4)
    with torch.no_grad():
        qmodel.eval()(images)  # initialise the LSQ steps
    return qmodel, images, labels


def test_gaussian_kl_matches_torch():
    mu_p, var_p = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 0.5, 2.0])
    mu_q, var_q = torch.tensor([0.3, 1.0, -1.0]), torch.tensor([2.0, 0.5, 0.7])
    want = kl_divergence(Normal(mu_p, var_p.sqrt()), Normal(mu_q, var_q.sqrt()))
    assert torch.allclose(gaussian_kl(mu_p, var_p, mu_q, var_q), want, atol=1e-6)
    with pytest.raises(QuantParamError, match="positive"):
        gaussian_kl(mu_p, torch.zeros(3), mu_q, var_q)


def test_aiwq_is_zero_for_no_change_and_grows_with_the_shift():
    y = torch.randn(16, 4, 5, 5)
    assert aiwq(y, y.clone()) == 0.0
    assert 0 < aiwq(y, y + 0.1) < aiwq(y, y + 0.5)
    with pytest.raises(QuantParamError, match="differ in shape"):
        aiwq(y, y[:, :3])


def test_profit_model_uses_the_shifted_grid_after_hswish(qmodel_and_batch):
    qmodel, _, _ = qmodel_and_batch
    layers = quant_layers(qmodel)
    assert isinstance(layers["blocks.4.dw.conv"].a_quantizer, ShiftedActQuantizer)
    assert not isinstance(layers["blocks.4.expand.conv"].a_quantizer, ShiftedActQuantizer)
    assert layers["stem.conv"].w_quantizer.bits == 8 and layers["blocks.1.dw.conv"].w_quantizer.bits == 4


def test_aiwq_step_skips_frozen_layers_and_frozen_weights_stay(qmodel_and_batch):
    import copy
    qmodel, images, labels = qmodel_and_batch
    qmodel = copy.deepcopy(qmodel)
    freeze_layers(qmodel, ["blocks.2.dw.conv", "fc"])
    before = qmodel.blocks[2].dw.conv.weight.detach().clone()
    optimizer = torch.optim.SGD([p for p in qmodel.parameters() if p.requires_grad], lr=0.5)
    qmodel.train()
    loss, q_kl, fp_kl = aiwq_step(qmodel, images, labels, optimizer)
    assert loss > 0 and "blocks.2.dw.conv" not in q_kl and "fc" not in q_kl and len(q_kl) == 22
    assert set(q_kl) == set(fp_kl) and max(q_kl.values()) > 0
    assert torch.equal(qmodel.blocks[2].dw.conv.weight, before)
    _, none, _ = aiwq_step(qmodel, images, labels, optimizer, layers=[])
    assert none == {}
    with pytest.raises(PolicyError, match="unknown layer"):
        freeze_layers(qmodel, ["blocks.9.dw.conv"])


def test_layers_to_freeze_ranks_by_aiwq():
    scores = {"a": 0.1, "b": 0.5, "c": 0.3, "d": 0.05, "e": 0.2, "f": 0.4}
    assert layers_to_freeze(scores, [], 1 / 3) == ["b", "f"]
    assert layers_to_freeze(scores, ["b", "f"], 2 / 3) == ["c", "e"]
    assert layers_to_freeze(scores, ["b", "f"], 1 / 3) == []
    with pytest.raises(QuantParamError, match="fraction"):
        layers_to_freeze(scores, [], 1.5)


def test_bn_only_and_bn_fluctuation(qmodel_and_batch):
    import copy
    qmodel = copy.deepcopy(qmodel_and_batch[0])
    bn_only(qmodel)
    trainable = [n for n, p in qmodel.named_parameters() if p.requires_grad]
    assert trainable and all(".bn." in n for n in trainable)
    snap = bn_running_means(qmodel)
    assert bn_fluctuation([snap, snap], qmodel) == 0.0
    moved = {n: v + 0.1 for n, v in snap.items()}
    assert bn_fluctuation([snap, moved], qmodel) > 0
    with pytest.raises(QuantParamError, match="at least 2"):
        bn_fluctuation([snap], qmodel)
