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
    opt = make_optimizer(model, JointConfig(lr=1e-4, step_lr=1e-3, weight_decay=5e-4))
    lrs = [g["lr"] for g in opt.param_groups]
    n_steps = sum(1 for n, _ in model.named_parameters() if ".steps." in n)
    assert lrs == [1e-4, 1e-4, 1e-3] and len(opt.param_groups[-1]["params"]) == n_steps == 2 * (26 * 5 + 2)
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0, 0.0]  # never on steps or BatchNorm
    named = dict(model.named_parameters())
    ids = [{id(p) for p in g["params"]} for g in opt.param_groups]
    assert {id(p) for p in named.values()} == ids[0] | ids[1] | ids[2] and not ids[0] & ids[1]
    assert id(named["pw1.conv.weight"]) in ids[0] and id(named["fc.weight"]) in ids[0]
    assert id(named["pw1.bn.weight"]) in ids[1] and id(named["pw1.bn.bias"]) in ids[1]


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam)])
def test_optimizer_is_chosen_by_the_config(fp, name, cls):
    opt = make_optimizer(joint_model(fp, OPTIONS), JointConfig(optimizer=name, momentum=0.8))
    assert type(opt) is cls
    if name == "sgd":
        assert all(g["momentum"] == 0.8 for g in opt.param_groups)


def test_unknown_optimizer_is_refused(fp):
    from mpqlab.errors import PolicyError

    with pytest.raises(PolicyError, match="rmsprop"):
        make_optimizer(joint_model(fp, OPTIONS), JointConfig(optimizer="rmsprop"))


def test_max_grad_norm_clips_each_pass_before_summing(fp, batch):
    images, labels = batch
    model = joint_model(fp, OPTIONS)
    layers, _ = searchable_layers(model)
    model.train()
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=0.0)
    max_norm = 0.05  # far below every pass's gradient norm, so every pass is clipped
    joint_step(model, layers, OPTIONS, images, labels, optimizer, random.Random(3), max_grad_norm=max_norm)
    got = [None if p.grad is None else p.grad.clone() for p in params]

    # by hand: each pass's gradient scaled to norm max_norm (clip_grad_norm_'s 1e-6 guard), then summed
    rng = random.Random(3)
    settings = [({n: b for n in layers}, {n: b for n in layers}) for b in OPTIONS]
    settings.append(({n: rng.choice(OPTIONS) for n in layers}, {n: rng.choice(OPTIONS) for n in layers}))
    want = [torch.zeros_like(p) for p in params]
    for w_bits, a_bits in settings:
        model.zero_grad(set_to_none=True)
        set_bits(model, w_bits, a_bits)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        assert norm > 10 * max_norm  # the pass really is clipped
        for w, g in zip(want, grads):
            w += g * (max_norm / (norm + 1e-6))
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in got if g is not None]))
    assert total <= (len(OPTIONS) + 1) * max_norm * (1 + 1e-5)
    for p, g, w in zip(params, got, want):
        assert torch.allclose(torch.zeros_like(p) if g is None else g, w, rtol=1e-4, atol=1e-8)


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


def _steps(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".steps." in n}


def _shuffled_loader(batch):
    """A fresh seeded loader of 8 images in batches of 4 (rebuilt per run, as a restarted script does)."""
    images, labels = batch
    data = TensorDataset(torch.cat([images, images.flip(0)]), torch.cat([labels, labels.flip(0)]))
    return DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))


def test_initial_model_is_where_train_joint_starts(fp, batch):
    from mpqlab.limpq.joint import initial_model

    loader = _shuffled_loader(batch)
    config = JointConfig(steps=1, batch_size=4, lr=0.0, step_lr=0.0, optimizer="sgd")
    trained, _ = train_joint(fp, loader, config)  # learning rates 0: the steps stay at their start
    start = initial_model(fp, config, next(iter(_shuffled_loader(batch)))[0])
    got, want = _steps(trained), _steps(start)
    assert got.keys() == want.keys() and len(got) == 2 * (26 * 5 + 2)
    assert all(torch.equal(got[n], want[n]) for n in got)
    other = initial_model(fp, config, batch[0] * 3)  # other images, other starts: the batch matters
    assert not all(torch.equal(_steps(other)[n], want[n]) for n in want)


def _resume_config() -> JointConfig:
    return JointConfig(steps=4, batch_size=4, lr=0.01, step_lr=0.01, optimizer="sgd", momentum=0.9,
                       bn_per_bits=True, max_grad_norm=1.0)


def test_resumed_run_ends_where_the_uninterrupted_run_ends(fp, batch, tmp_path, monkeypatch):
    from mpqlab.limpq import joint

    config = _resume_config()
    whole, whole_history = train_joint(fp, _shuffled_loader(batch), config)

    state = tmp_path / "run.state.pt"
    real_step, calls = joint.joint_step, []

    def dies_at_the_third_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # after the save at step 2
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(joint, "joint_step", dies_at_the_third_step)
    with pytest.raises(KeyboardInterrupt):
        train_joint(fp, _shuffled_loader(batch), config, resume_from=state, save_every=2)
    assert state.is_file() and torch.load(state, weights_only=True)["step"] == 2
    monkeypatch.setattr(joint, "joint_step", real_step)
    resumed, history = train_joint(fp, _shuffled_loader(batch), config, resume_from=state, save_every=2)

    assert list(history.index) == [0, 1, 2, 3]
    losses = [c for c in history.columns if c.startswith("loss")]
    assert history[losses].to_numpy() == pytest.approx(whole_history[losses].to_numpy(), rel=0, abs=1e-6)
    got, want = _steps(resumed), _steps(whole)
    assert all(torch.allclose(got[n], want[n], rtol=0, atol=1e-6) for n in want)  # measured: bit-identical
    for (n, p), q in zip(resumed.state_dict().items(), whole.state_dict().values()):
        assert torch.allclose(p.float(), q.float(), rtol=1e-5, atol=1e-6), n  # weights and every BatchNorm too


def test_state_file_of_other_settings_is_refused(fp, batch, tmp_path):
    from mpqlab.errors import PolicyError

    state = tmp_path / "run.state.pt"
    config = JointConfig(steps=2, batch_size=4, optimizer="sgd")
    train_joint(fp, _shuffled_loader(batch), config, resume_from=state, save_every=1)
    assert state.is_file()  # saved after step 1 of 2
    with pytest.raises(PolicyError, match="other settings"):
        train_joint(fp, _shuffled_loader(batch), JointConfig(steps=2, batch_size=4, optimizer="sgd", lr=0.5),
                    resume_from=state, save_every=1)


def test_min_step_fraction_keeps_steps_above_their_floor(fp, batch):
    from mpqlab.limpq.joint import initial_model

    fraction = 0.5
    # Adam moves every step by about step_lr = 1: without the floor half of them would turn negative
    config = JointConfig(steps=1, batch_size=4, lr=0.0, step_lr=1.0, optimizer="adam")
    trained, _ = train_joint(fp, _shuffled_loader(batch), config, min_step_fraction=fraction)
    start = _steps(initial_model(fp, config, next(iter(_shuffled_loader(batch)))[0]))
    got = _steps(trained)
    floors = {n: fraction * float(s) for n, s in start.items()}
    assert all(float(got[n]) >= floors[n] * (1 - 1e-6) for n in got)
    on_floor = sum(float(got[n]) == pytest.approx(floors[n], rel=1e-6) for n in got)
    assert 0 < on_floor < len(got)  # some were pushed down onto the floor, some moved up


def test_without_the_random_pass_a_step_is_the_n_uniform_passes(fp, batch):
    images, labels = batch
    grads = {}
    for random_pass in (True, False):
        model = joint_model(fp, OPTIONS)
        layers, _ = searchable_layers(model)
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        rng = random.Random(7)
        losses = joint_step(model, layers, OPTIONS, images, labels, optimizer, rng, random_pass=random_pass)
        assert len(losses) == len(OPTIONS) + random_pass
        grads[random_pass] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        if not random_pass:
            assert rng.random() == random.Random(7).random()  # the ablation draws nothing
    # the summed gradients differ by the random pass's
    assert any(not torch.allclose(grads[True][n], grads[False][n]) for n in grads[False])


def test_training_without_the_random_pass_records_no_random_loss(fp, batch):
    images, labels = batch
    loader = DataLoader(TensorDataset(images.repeat(2, 1, 1, 1), labels.repeat(2)), batch_size=4)
    _, history = train_joint(fp, loader, JointConfig(steps=2, batch_size=4, random_pass=False))
    assert "loss_random" not in history.columns and "loss_2bit" in history.columns
