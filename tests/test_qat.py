import math

import pytest
import torch
from torch.utils.data import TensorDataset

from mpqlab.data import Splits
from mpqlab.errors import PolicyError, QuantParamError
from mpqlab.models import mobilenet_v1_small
from mpqlab.qat import (
    METHODS, build_qat_model, clip_range, clip_vs_max, fine_tune, initialize_quantizers, mse_clip, param_groups,
    recalibrate_bn,
)
from mpqlab.quant.lsq import LSQQuantizer
from mpqlab.quant.lsq_plus import LSQPlusQuantizer
from mpqlab.quant.pact import DoReFaWeightQuantizer, PACTQuantizer
from mpqlab.quant.policy import model_policy
from mpqlab.quant.qil import QILQuantizer
from mpqlab.quant.quantizer import FullPrecision

KINDS = {"pact": (DoReFaWeightQuantizer, PACTQuantizer), "qil": (QILQuantizer, QILQuantizer),
         "lsq": (LSQQuantizer, LSQQuantizer), "lsq_plus": (LSQPlusQuantizer, LSQPlusQuantizer)}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return mobilenet_v1_small().eval()


def tiny_splits(n=48):
    g = torch.Generator().manual_seed(0)
    make = lambda: TensorDataset(torch.randn(n, 1, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))
    return Splits(make(), make(), make())


@pytest.mark.parametrize("method", sorted(METHODS))
def test_build_puts_the_method_inside_and_8_bit_lsq_at_the_edges(model, method):
    q = build_qat_model(model, method, 3)
    policy = model_policy(q)
    assert policy["conv1.conv"] == (8, 8) and policy["fc"] == (8, 8) and policy["pw5.conv"] == (3, 3)
    w_kind, a_kind = KINDS[method]
    assert isinstance(q.dw3.conv.w_quantizer, w_kind) and isinstance(q.dw3.conv.a_quantizer, a_kind)
    assert isinstance(q.conv1.conv.a_quantizer, LSQQuantizer) and q.conv1.conv.a_quantizer.signed
    assert not q.fc.a_quantizer.signed
    assert not hasattr(model.conv1.conv, "w_quantizer")  # the float model is left alone


def test_build_options_and_errors(model):
    with pytest.raises(PolicyError, match="unknown QAT method"):
        build_qat_model(model, "dorefa", 4)
    q = build_qat_model(model, "lsq", 2, grad_scale=False)
    assert all(not m.grad_scale for m in q.modules() if isinstance(m, LSQQuantizer))
    q = build_qat_model(model, "lsq", 2, first_last_bits=None, act_factory=lambda b, n, l: FullPrecision())
    assert model_policy(q)["conv1.conv"] == (2, None)


def test_param_groups_separate_quantizer_parameters(model):
    q = build_qat_model(model, "lsq_plus", 4)
    rest, quant = param_groups(q, 0.01, 0.001)
    n_quant = sum(1 for n, _ in q.named_parameters() if "quantizer" in n)
    assert len(quant["params"]) == n_quant > 0 and quant["lr"] == 0.001 and quant["weight_decay"] == 0.0
    assert len(rest["params"]) + n_quant == len(list(q.parameters()))


def test_clip_range_of_each_quantizer():
    pact = PACTQuantizer(4, alpha=2.5)
    assert clip_range(pact) == (0.0, 2.5)
    lsq = LSQQuantizer(4, "weight", init_step=0.1)
    assert clip_range(lsq) == pytest.approx((-0.8, 0.7))
    qil = QILQuantizer(3, "act", init_c=1.0, init_d=0.5)
    assert clip_range(qil) == pytest.approx((0.5, 1.5))
    plus = LSQPlusQuantizer(2, "act")
    with torch.no_grad():
        plus.step.fill_(0.5), plus.offset.fill_(-0.2)
    assert clip_range(plus) == pytest.approx((-0.2, 1.3))
    with pytest.raises(QuantParamError, match="FullPrecision"):
        clip_range(FullPrecision())


def test_mse_clip_is_inside_the_data_and_beats_max_at_2_bits():
    x = torch.randn(20000, generator=torch.Generator().manual_seed(0)).abs()
    hi = mse_clip(x, 3)
    assert 0 < hi < float(x.max())

    def err(top):
        s = top / 3
        return float(((torch.clamp(torch.round(x / s), 0, 3) * s - x) ** 2).mean())

    assert err(hi) < err(float(x.max()))


def test_initialize_sets_pact_and_qil_from_data(splits):
    from mpqlab.checkpoint import load_pretrained

    trained = load_pretrained("mobilenet_v1_small")
    images = splits.train.tensors[0][:32]
    for method in ("pact", "qil"):
        q = build_qat_model(trained, method, 2)
        initialize_quantizers(q, images)
        rows = {r["layer"]: r for r in clip_vs_max(q, images)}
        # set from data (not PACT's default 10); earlier layers change after the pass, so only roughly the max
        assert 0.2 * rows["pw4.conv"]["a_max"] < rows["pw4.conv"]["a_clip"] < 2 * rows["pw4.conv"]["a_max"]
        assert math.isclose(rows["fc"]["a_clip"], clip_range(q.fc.a_quantizer)[1])


def test_recalibrate_bn_replaces_running_statistics(model):
    q = build_qat_model(model, "lsq", 2)
    images = torch.randn(64, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    initialize_quantizers(q, images)
    before = q.pw3.bn.running_var.clone()
    recalibrate_bn(q, images, batch_size=32)
    assert not torch.allclose(before, q.pw3.bn.running_var) and not q.training
    assert q.pw3.bn.momentum == model.pw3.bn.momentum


def test_fine_tune_is_seeded_and_records_curves(splits):
    from mpqlab.checkpoint import load_pretrained

    trained = load_pretrained("mobilenet_v1_small")
    small = Splits(*(TensorDataset(*(t[:48] for t in d.tensors)) for d in (splits.train, splits.val, splits.test)))
    runs = [fine_tune(build_qat_model(trained, "lsq", 4), small, steps=3, chunk=2, eval_images=16,
                      curve_images=16, batch_size=8) for _ in range(2)]
    r = runs[0]
    assert r.steps == [2, 3] and len(r.train_loss) == len(r.val_accuracy) == 2
    assert 0 <= r.accuracy <= 1 and r.seconds > 0
    assert runs[0].train_loss == runs[1].train_loss and runs[0].accuracy == runs[1].accuracy


def test_fine_tune_rejects_bad_settings(model):
    with pytest.raises(QuantParamError, match="steps"):
        fine_tune(build_qat_model(model, "lsq", 4), tiny_splits(), steps=0)
    with pytest.raises(QuantParamError, match="lr"):
        fine_tune(build_qat_model(model, "lsq", 4), tiny_splits(), steps=1, lr=-1.0)


def test_fine_tune_runs_past_one_epoch(splits):
    from mpqlab.checkpoint import load_pretrained

    # 48 images in batches of 16 is 3 steps per epoch; 7 steps start two more passes instead of running dry
    small = Splits(*(TensorDataset(*(t[:48] for t in d.tensors)) for d in (splits.train, splits.val, splits.test)))
    r = fine_tune(build_qat_model(load_pretrained("mobilenet_v1_small"), "lsq", 4), small, steps=7, chunk=7,
                  eval_images=16, curve_images=16, batch_size=16)
    assert r.steps == [7] and math.isfinite(r.train_loss[0])
