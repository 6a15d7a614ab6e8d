"""mpqlab.deploy on small random models: bit packing, BN folding, the safetensors file, its size and its
validation, and the integer path against fake quantization and against the int64 reference accumulator."""

import json
import math
import struct

import numpy as np
import pytest
import torch

from mpqlab.cost import layer_table, model_size_bits
from mpqlab.deploy import (
    IntegerModel, export_model, fold_model, load_packed, lsq_model_from_state, overhead_bytes, pack_codes,
    packed_bytes, packed_size_report, policy_from_state, unpack_codes,
)
from mpqlab.deploy.container import data_sha256
from mpqlab.deploy.integer_model import accumulate, accumulator_bound, build_integer_layers
from mpqlab.errors import BitWidthError, CheckpointError, QuantParamError
from mpqlab.limpq.joint import joint_model, lsq_policy_model
from mpqlab.models import mobilenet_v1_small, resnet20
from mpqlab.quant.integer import conv2d_accumulate
from mpqlab.quant.policy import quantizable_layers, uniform_policy

BITS = (2, 3, 4, 5, 6, 7, 8)


def mixed_policy(model) -> dict:
    """Every bit-width 2-8 for weights and activations somewhere; first and last layers at 8 bits."""
    names = quantizable_layers(model)
    policy = {n: (BITS[i % 7], BITS[(3 * i + 1) % 7]) for i, n in enumerate(names)}
    policy[names[0]] = policy[names[-1]] = (8, 8)
    return policy


def random_lsq_model(policy_fn=mixed_policy, seed: int = 0):
    """MobileNetV1-small with random weights and BN statistics (some gamma < 0), LSQ at ``policy_fn``'s policy."""
    torch.manual_seed(seed)
    fp = mobilenet_v1_small()
    for m in fp.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.randn(m.num_features) * 0.5 + 1.0  # a few negative: the sign path runs
            m.bias.data = torch.randn(m.num_features) * 0.3
            m.running_mean = torch.randn(m.num_features) * 0.2
            m.running_var = torch.rand(m.num_features) + 0.5
    qmodel = lsq_policy_model(fp, policy_fn(fp)).eval()
    with torch.no_grad():
        qmodel(torch.randn(16, 1, 32, 32))  # LSQ initialises its steps on the first batch
    return qmodel


@pytest.fixture(scope="module")
def qmodel():
    return random_lsq_model()


@pytest.fixture(scope="module")
def packed_file(qmodel, tmp_path_factory):
    return export_model(qmodel, tmp_path_factory.mktemp("deploy") / "mixed.safetensors")


# --- bit packing ---

def test_pack_by_hand():
    assert pack_codes(torch.tensor([5, 2, 7]), 3).tolist() == [213, 1]  # 101 010 111 -> 10101011 1 (LSB first)
    assert unpack_codes(torch.tensor([213, 1], dtype=torch.uint8), 3, 3).tolist() == [5, 2, 7]


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", [1, 7, 8, 13, 1000])
def test_pack_round_trip_and_size(bits, count):
    codes = torch.randint(0, 2**bits, (count,), generator=torch.Generator().manual_seed(bits * count))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(count * bits / 8) == packed_bytes(count, bits)
    assert torch.equal(unpack_codes(packed, bits, count), codes)


def test_pack_matches_numpy_packbits_little():
    codes = torch.randint(0, 8, (101,), generator=torch.Generator().manual_seed(0))
    bits = ((codes[:, None] >> torch.arange(3)) & 1).reshape(-1).numpy().astype(np.uint8)
    assert pack_codes(codes, 3).numpy().tolist() == np.packbits(bits, bitorder="little").tolist()


def test_pack_refuses_bad_input():
    with pytest.raises(QuantParamError, match="0..7"):
        pack_codes(torch.tensor([8]), 3)
    with pytest.raises(QuantParamError):
        pack_codes(torch.tensor([-1]), 3)
    with pytest.raises(BitWidthError, match="take 2 bytes"):
        unpack_codes(torch.tensor([1, 2, 3], dtype=torch.uint8), 3, 3)
    with pytest.raises(BitWidthError):
        pack_codes(torch.tensor([1]), 9)


# --- folding ---

def test_fold_keeps_the_trained_codes_and_folds_bn(qmodel):
    layers = fold_model(qmodel)
    assert [l.name for l in layers] == quantizable_layers(qmodel)
    dw = next(l for l in layers if l.name == "dw3.conv")
    conv = qmodel.dw3.conv
    assert dw.groups == conv.groups == conv.in_channels  # depthwise
    w_hat = conv.w_quantizer(conv.weight).detach()
    assert torch.equal(dw.codes.float() * conv.w_quantizer.step.detach(), w_hat)  # the fake-quant weights exactly
    y = torch.randn(2, dw.codes.shape[0], 4, 4)
    folded = y * dw.channel_scale[:, None, None] + dw.channel_shift[:, None, None]
    assert torch.allclose(folded, qmodel.dw3.bn(y).detach(), atol=1e-5)


def test_policy_is_read_from_the_state_dict(qmodel):
    policy = policy_from_state(qmodel.state_dict())
    assert policy == mixed_policy(mobilenet_v1_small())
    rebuilt = lsq_model_from_state("mobilenet_v1_small", qmodel.state_dict())
    x = torch.randn(4, 1, 32, 32)
    assert torch.equal(rebuilt(x), qmodel(x))


def test_joint_and_unsupported_models_are_refused():
    joint = joint_model(mobilenet_v1_small())
    with pytest.raises(CheckpointError, match="exactly one weight step"):
        policy_from_state(joint.state_dict())
    with pytest.raises(CheckpointError, match="no LSQ step sizes"):
        policy_from_state(mobilenet_v1_small().state_dict())
    resnet = lsq_policy_model(resnet20(), uniform_policy(resnet20(), 8, 8))
    with pytest.raises(CheckpointError, match="MobileNetV1"):
        fold_model(resnet)


# --- the file ---

def test_file_round_trip(qmodel, packed_file):
    packed = load_packed(packed_file)
    assert packed.policy == mixed_policy(mobilenet_v1_small())
    for record, layer in zip(packed.layers, fold_model(qmodel)):
        assert torch.equal(record["codes"], layer.codes)
        assert record["w_scale"] == layer.w_scale and record["a_scale"] == layer.a_scale  # exact float32 copies
    used = {r["w_bits"] for r in packed.layers}
    assert {3, 5, 6} <= used  # odd bit-widths are packed too, not rounded up to a byte


def test_file_size_is_the_cost_model_plus_the_stated_overhead(qmodel, packed_file):
    """The byte budget: file = sum params * w_bits / 8 + 8 + header + 8 bytes per channel + < 1 byte per layer."""
    table = layer_table(qmodel, (1, 1, 32, 32))
    policy = mixed_policy(mobilenet_v1_small())
    cost_bytes = model_size_bits(table, policy) / 8
    parts = overhead_bytes(packed_file)
    size = packed_file.stat().st_size
    assert size == cost_bytes + parts["overhead_bytes"]
    assert parts["channel_bytes"] == 8 * int(table.out_channels.sum())
    assert 0 <= parts["padding_bytes"] < len(table)
    with open(packed_file, "rb") as f:
        assert parts["header_bytes"] == 8 + struct.unpack("<Q", f.read(8))[0]
    report = packed_size_report(qmodel, packed_file)
    assert report["file_bytes"] == size and report["cost_model_bytes"] == cost_bytes
    assert report["float32_bytes"] == 4 * int(table.params.sum())


def rewrite(path, out, edit_metadata=None, edit_tensors=None):
    """Copy a packed file with its metadata or tensors changed (a valid safetensors file either way)."""
    from safetensors.torch import load, save

    raw = path.read_bytes()
    tensors = load(raw)
    (length,) = struct.unpack("<Q", raw[:8])
    metadata = json.loads(raw[8:8 + length])["__metadata__"]
    if edit_metadata:
        edit_metadata(metadata)
    if edit_tensors:
        edit_tensors(tensors)
        metadata["sha256"] = data_sha256(tensors)  # a consistent checksum: the later checks must catch it
    out.write_bytes(save(tensors, metadata=metadata))
    return out


def test_loader_refuses_corrupt_files(packed_file, tmp_path):
    flipped = bytearray(packed_file.read_bytes())
    flipped[-5] ^= 0x10  # one bit in the last tensor's data
    (tmp_path / "flipped.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_packed(tmp_path / "flipped.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(packed_file.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_packed(tmp_path / "cut.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_packed(tmp_path / "missing.safetensors")


def test_loader_checks_bits_shapes_and_policy(packed_file, tmp_path):
    def set_layer(key, value, index=2):
        def edit(meta):
            layers = json.loads(meta["layers"])
            layers[index][key] = value
            meta["layers"] = json.dumps(layers)
        return edit

    def bad_policy(meta):
        policy = json.loads(meta["policy"])
        policy["fc"] = [4, 8]
        meta["policy"] = json.dumps(policy)

    cases = {"w_bits": (set_layer("w_bits", 9), "from 2 to 8"),
             "bits_vs_bytes": (set_layer("w_bits", 8, index=3), "codes of 8 bits take"),
             "shape": (set_layer("shape", [5, 5, 1, 1]), "uint8 bytes|shape"),
             "scale": (set_layer("a_scale", -1.0), "positive finite"),
             "policy": (bad_policy, "the policy says"),
             "format": (lambda m: m.update(format="other/9"), "format")}
    for name, (edit, message) in cases.items():
        with pytest.raises(CheckpointError, match=message):
            load_packed(rewrite(packed_file, tmp_path / f"{name}.safetensors", edit_metadata=edit))

    def drop_channel(tensors):
        del tensors["pw2.conv.channel"]

    with pytest.raises(CheckpointError, match="do not match the layer list"):
        load_packed(rewrite(packed_file, tmp_path / "drop.safetensors", edit_tensors=drop_channel))


# --- integer execution ---

def test_float64_accumulation_equals_the_int64_reference(packed_file):
    layers = build_integer_layers(load_packed(packed_file))
    g = torch.Generator().manual_seed(0)
    for layer in layers[:4]:  # conv1 (signed input), dw1 (depthwise), pw1, dw2 (stride 2)
        c_in = layer.codes.shape[1] * layer.groups
        q_x = torch.randint(layer.in_q_min, layer.in_q_max + 1, (3, c_in, 9, 9), generator=g)
        conv = torch.nn.Conv2d(c_in, layer.codes.shape[0], layer.codes.shape[2], layer.stride, layer.padding,
                               groups=layer.groups, bias=False)
        ref = conv2d_accumulate(q_x, 0, layer.codes, torch.zeros(layer.codes.shape[0], dtype=torch.long),
                                torch.zeros(layer.codes.shape[0], dtype=torch.long), conv)
        want = (ref << layer.fraction_bits) + layer.bias[:, None, None]
        assert torch.equal(accumulate(layer, q_x), want), layer.name
        assert int(want.abs().max()) <= accumulator_bound(layer.codes, max(-layer.in_q_min, layer.in_q_max),
                                                          layer.bias, layer.fraction_bits) <= 2**31 - 1


def test_accumulator_bound_refuses_int32_overflow():
    from mpqlab.deploy.integer_model import fraction_bits

    codes = torch.full((1, 80000), 127)  # 80000 * 127 * 255 = 2.6e9 > 2^31
    with pytest.raises(QuantParamError, match="2\\^31"):
        fraction_bits("big", codes, 255, torch.tensor([[1.0], [0.0]]), 1.0)


def test_integer_path_matches_fake_quant_on_a_random_mixed_model(qmodel, packed_file):
    """Same codes at every layer but for rare rounding ties; same predictions on 64 random inputs."""
    from mpqlab.deploy import compare_integer
    from torch.utils.data import TensorDataset

    x = torch.randn(64, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    data = TensorDataset(x, torch.zeros(64, dtype=torch.long))
    result = compare_integer(qmodel, load_packed(packed_file), data, batch_size=32, progress=False)
    assert result["same_codes"]["conv1.conv"] == 1.0  # the input is quantized by the same formula
    assert result["same_codes"]["dw1.conv"] >= 0.999  # no drift yet: only ties can differ
    assert min(result["same_codes"].values()) >= 0.99
    assert result["same_prediction"] == 1.0
    logits = IntegerModel(load_packed(packed_file))(x)
    assert logits.shape == (64, 10) and logits.dtype == torch.float64


# --- the command line ---

@pytest.mark.parametrize("spec", ["mobilenet_v1_small", "mpqlab:mobilenet_v1_small"])  # `finetune`'s spec too
def test_export_command_writes_a_valid_file(qmodel, tmp_path, capsys, spec):
    from mpqlab.__main__ import main
    from mpqlab.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "model.pt", qmodel.state_dict(), {"note": "test"})
    out = tmp_path / "model.safetensors"
    code = main(["export", "--model", spec, "--checkpoint", str(tmp_path / "model.pt"),
                 "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and f"{out.stat().st_size} bytes" in printed
    assert load_packed(out).policy == mixed_policy(mobilenet_v1_small())


def test_export_command_refuses_a_float_checkpoint(tmp_path, capsys):
    from mpqlab.__main__ import main

    torch.save(mobilenet_v1_small().state_dict(), tmp_path / "float.pt")  # no .json beside it: not verified
    code = main(["export", "--model", "mobilenet_v1_small", "--checkpoint", str(tmp_path / "float.pt"),
                 "--out", str(tmp_path / "x.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and "no LSQ step sizes" in err and "\n" == err[-1] and err.count("\n") == 1
    code = main(["export", "--model", "resnet99", "--checkpoint", str(tmp_path / "float.pt"),
                 "--out", str(tmp_path / "x.safetensors")])
    assert code == 2 and "resnet99" in capsys.readouterr().err


# --- ONNX ---

@pytest.mark.parametrize("bits", [8, 4])
def test_onnxruntime_runs_the_qdq_graph_like_the_integer_path(bits, tmp_path):
    from mpqlab.deploy.onnx_qdq import onnx_logits, qdq_model

    model = random_lsq_model(lambda fp: uniform_policy(fp, bits, bits, first_last_bits=8), seed=2)
    packed = load_packed(export_model(model, tmp_path / f"w{bits}.safetensors"))
    graph = qdq_model(packed)
    assert graph.opset_import[0].version == (13 if bits == 8 else 21)
    x = torch.randn(64, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    ort, ours = onnx_logits(graph, x), IntegerModel(packed)(x)
    assert (ort.argmax(1) == ours.argmax(1)).double().mean() >= 0.95
    assert torch.allclose(ort.double(), model(x).double(), atol=1e-3 * float(ours.abs().max()) + 1e-3)


def test_onnx_refuses_bit_widths_it_has_no_type_for(packed_file):
    from mpqlab.deploy.onnx_qdq import qdq_model

    with pytest.raises(BitWidthError, match="INT8, INT4, INT2"):
        qdq_model(load_packed(packed_file))


def test_requantization_rounds_once_where_gemmlowp_rounds_twice():
    """A value 2e-7 below a half step (measured in a LIMPQ layer): one rounding gives 2, gemmlowp's two give 3."""
    from fractions import Fraction
    from types import SimpleNamespace

    from mpqlab.deploy.integer_model import requantize_once
    from mpqlab.quant.integer import QParams, quantize_multiplier, requantize

    acc, multiplier = 983776, 2.4999997876752276 / 983776
    m0, shift = quantize_multiplier(multiplier)
    out = QParams(scale=1.0, zero_point=0, q_min=0, q_max=255)
    layer = SimpleNamespace(m0=torch.tensor([m0]), shift=torch.tensor([shift]), out=out)
    exact = Fraction(acc * m0, 2 ** (31 + shift))
    assert exact < Fraction(5, 2)
    assert requantize_once(torch.tensor([[acc]]), layer).item() == 2
    assert requantize(torch.tensor([[acc]]), torch.tensor([multiplier], dtype=torch.float64), out).item() == 3
    g = torch.Generator().manual_seed(0)
    accs = torch.randint(-2**31 + 1, 2**31 - 1, (200, 3), generator=g)
    layer = SimpleNamespace(m0=torch.tensor([quantize_multiplier(m)[0] for m in (1e-3, 3e-6, 0.4)]),
                            shift=torch.tensor([quantize_multiplier(m)[1] for m in (1e-3, 3e-6, 0.4)]),
                            out=QParams(scale=1.0, zero_point=0, q_min=-2**40, q_max=2**40))
    got = requantize_once(accs, layer)
    for (n, c), value in zip([(n, c) for n in range(200) for c in range(3)], got.reshape(-1).tolist()):
        e = Fraction(int(accs[n, c]) * int(layer.m0[c]), 2 ** (31 + int(layer.shift[c])))
        want = int(e + Fraction(1, 2)) if e >= 0 else -int(-e + Fraction(1, 2))  # halves away from zero
        assert value == want
