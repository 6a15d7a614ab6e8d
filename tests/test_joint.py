"""LIMPQ joint training: the model it builds, one step's n + 1 accumulated passes, and the indicator output."""

import random

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mpqlab.limpq.indicators import indicators_from_dict, indicators_to_dict
from mpqlab.limpq.joint import (
    JointConfig, SwitchableBatchNorm2d, bn_name, joint_model, joint_step, make_optimizer, searchable_layers,
    set_bits, step_size_tables, train_joint, indicators_from_model, lsq_policy_model,
)
from mpqlab.models import mobilenet_v1_small, resnet20
from mpqlab.quant.lsq import LSQQuantizer

OPTIONS = [2, 3, 4, 5, 6]


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(4, 1, 32, 32, generator=gen), torch.randint(0, 10, (4,), generator=gen)


@pytest.fixture(scope="module")
def fp():
    torch.manual_seed(0)
    model = mobilenet_v1_small()
    for m in model.modules():  # BatchNorm statistics of real data, or eval-mode activations vanish with depth
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        model.train()(torch.randn(16, 1, 32, 32, generator=torch.Generator().manual_seed(1)))
    return model.eval()


def test_joint_model_quantizes_searchable_layers_with_one_step_per_bit_width(fp):
    model = joint_model(fp, OPTIONS)
    layers, fixed = searchable_layers(model)
    assert fixed == ["conv1.conv", "fc"] and len(layers) == 26 and layers[0] == "dw1.conv"
    modules = dict(model.named_modules())
    for n in layers:
        assert modules[n].w_quantizer.bit_options == OPTIONS and modules[n].a_quantizer.bit_options == OPTIONS
        assert not modules[n].a_quantizer.signed
    assert modules["conv1.conv"].a_quantizer.signed and modules["conv1.conv"].w_quantizer.bits == 8
    assert modules["fc"].w_quantizer.bit_options == [8]
    assert fp.conv1.conv.__class__ is torch.nn.Conv2d  # the float model is untouched


def test_bn_names_follow_the_workbook_models():
    assert bn_name("dw3.conv") == "dw3.bn" and bn_name("layer1.0.conv2") == "layer1.0.bn2"
    model = joint_model(resnet20(), OPTIONS, bn_per_bits=True)
    assert isinstance(model.layer1[0].bn2, SwitchableBatchNorm2d) and isinstance(model.bn1, torch.nn.BatchNorm2d)
    set_bits(model, {"layer1.0.conv2": 3}, {"layer1.0.conv2": 5})
    assert model.layer1[0].bn2.bits == 3 and model.layer1[0].conv2.a_quantizer.bits == 5


def test_one_step_sums_the_gradients_of_n_plus_one_passes(fp, batch):
    images, labels = batch
    model = joint_model(fp, OPTIONS)
    layers, _ = searchable_layers(model)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the step leaves the weights as they are
    losses = joint_step(model, layers, OPTIONS, images, labels, optimizer, random.Random(7))
    assert len(losses) == len(OPTIONS) + 1
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    # the same passes by hand, with the random pass drawn from the same seed
    rng = random.Random(7)
    settings = [({n: b for n in layers}, {n: b for n in layers}) for b in OPTIONS]
    settings.append(({n: rng.choice(OPTIONS) for n in layers}, {n: rng.choice(OPTIONS) for n in layers}))
    model.zero_grad(set_to_none=True)
    for (w_bits, a_bits), loss in zip(settings, losses):
        set_bits(model, w_bits, a_bits)
        again = torch.nn.functional.cross_entropy(model(images), labels)
        assert again.item() == pytest.approx(loss, rel=1e-5)
        again.backward()
    for n, p in model.named_parameters():
        if n in got:
            assert torch.allclose(got[n], p.grad, rtol=1e-4, atol=1e-7), n
    # every bit-width's step got a gradient: each uniform pass uses its own
    steps = [n for n in got if ".steps." in n and n.startswith("pw5.")]
    assert len(steps) == 2 * len(OPTIONS)


def test_optimizer_keeps_step_sizes_in_their_own_group(fp):
    model = joint_model(fp, OPTIONS)
    opt = make_optimizer(model, JointConfig(lr=1e-4, step_lr=1e-3))
    lrs = [g["lr"] for g in opt.param_groups]
    n_steps = sum(1 for n, _ in model.named_parameters() if ".steps." in n)
    assert lrs == [1e-4, 1e-3] and len(opt.param_groups[1]["params"]) == n_steps == 2 * (26 * 5 + 2)


def test_short_training_gives_a_valid_indicator_table(fp, batch):
    images, labels = batch
    loader = DataLoader(TensorDataset(images.repeat(2, 1, 1, 1), labels.repeat(2)), batch_size=4)
    model, history = train_joint(fp, loader, JointConfig(steps=3, batch_size=4))
    assert list(history.index) == [0, 1, 2] and history.filter(like="loss").notna().all().all()
    w, a = step_size_tables(model)
    assert w.shape == a.shape == (26, 5) and (w.values > 0).all() and (a.values > 0).all()
    ind = indicators_from_model(model, fp)
    again = indicators_from_dict(indicators_to_dict(ind))  # the file format accepts it
    assert again.layer_names == ind.layer_names and again.fixed_layers["fc"].w_bits == 8
    assert ind.layer_macs["pw1.conv"] == 32 * 32 * 8 * 16 and ind.layer_params["dw1.conv"] == 8 * 9
    assert ind.weight_indicators["pw3.conv"][2] == w.loc["pw3.conv", 2]


def test_policy_model_has_plain_lsq_at_the_policy_bits(fp, batch):
    policy = {"conv1.conv": (8, 8), "dw1.conv": (3, 5), "fc": (8, 8)}
    model = lsq_policy_model(fp, policy)
    assert isinstance(model.dw1.conv.w_quantizer, LSQQuantizer) and model.dw1.conv.w_quantizer.bit_options == [3]
    assert model.conv1.conv.a_quantizer.signed and model.dw1.conv.a_quantizer.bits == 5
    assert model(batch[0]).shape == (4, 10)
