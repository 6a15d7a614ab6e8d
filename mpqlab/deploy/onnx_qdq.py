"""The packed model as an ONNX graph with QuantizeLinear/DequantizeLinear (QDQ) nodes, run in onnxruntime.

ONNX writes quantization as pairs ``QuantizeLinear(x, s, z) = saturate(round(x / s) + z)`` (halves to
even) and ``DequantizeLinear(q, s, z) = (q - z) s`` around float operators; a runtime may fuse them into
integer kernels (onnxruntime's QDQ format). Per layer the graph reads, from the packed file:

    x -> Q(s_x) -> DQ(s_x) -> Conv(., DQ(q_w, s_w), stride, pad, group) -> Mul(a_c) -> Add(b_c) -> Relu -> next

and ``GlobalAveragePool -> Flatten -> Q/DQ -> Gemm`` for the classifier; ``q_w`` are stored as int8
(or int4) initializers, activations after a ReLU as uint8 (uint4), the image as int8. BN stays a Mul and
an Add after the conv, as in ``mpqlab.deploy.fold``: the codes are the trained ones.

Which bit-widths ONNX can express: element types exist for 8 bits (INT8/UINT8, opset 10), 4 bits
(INT4/UINT4, opset 21) and 2 bits (INT2/UINT2, opset 25); there is no 3-, 5- or 6-bit integer type, and
QuantizeLinear saturates to its type's full range, so a 3-bit grid cannot be stated without extra
Clip nodes that are no longer the QDQ pattern. ``qdq_model`` raises for such a policy (LIMPQ's 2-6-bit
mix). Introduced in notebook 11.
"""

from __future__ import annotations

import numpy as np
import torch

from mpqlab.deploy.container import PackedModel
from mpqlab.errors import BitWidthError

# bits -> (signed element type, unsigned element type, lowest opset that has them)
ONNX_TYPES = {8: ("INT8", "UINT8", 13), 4: ("INT4", "UINT4", 21), 2: ("INT2", "UINT2", 25)}


def check_onnx_bits(packed: PackedModel) -> int:
    """The opset the policy needs, or BitWidthError naming the layers whose bit-width ONNX has no type for."""
    bad = {r["name"]: (r["w_bits"], r["a_bits"]) for r in packed.layers
           if r["w_bits"] not in ONNX_TYPES or r["a_bits"] not in ONNX_TYPES}
    if bad:
        shown = ", ".join(f"{n} W{w}A{a}" for n, (w, a) in list(bad.items())[:4])
        raise BitWidthError(f"ONNX has integer types for {sorted(ONNX_TYPES)} bits only (INT8, INT4, INT2); "
                            f"{len(bad)} layer(s) use other bit-widths: {shown}{', ...' if len(bad) > 4 else ''}")
    return max(ONNX_TYPES[b][2] for r in packed.layers for b in (r["w_bits"], r["a_bits"]))


def qdq_model(packed: PackedModel):
    """An ``onnx.ModelProto`` computing the packed model's fake-quant forward pass with Q/DQ nodes."""
    from onnx import TensorProto, checker, helper

    opset = check_onnx_bits(packed)
    nodes, inits = [], []

    def const(name, array):  # a float32 initializer
        values = np.asarray(array, np.float32).ravel()
        inits.append(helper.make_tensor(name, TensorProto.FLOAT, list(array.shape), values))
        return name

    def int_const(name, bits, signed, shape, values):
        elem = getattr(TensorProto, ONNX_TYPES[bits][0 if signed else 1])
        inits.append(helper.make_tensor(name, elem, list(shape), [int(v) for v in values]))
        return name

    x = "image"
    for i, r in enumerate(packed.layers):
        n = r["name"].replace(".", "_")
        s_x, z_x = const(f"{n}_s_x", np.array(r["a_scale"])), int_const(f"{n}_z_x", r["a_bits"], r["a_signed"], [], [0])
        nodes += [helper.make_node("QuantizeLinear", [x, s_x, z_x], [f"{n}_xq"]),
                  helper.make_node("DequantizeLinear", [f"{n}_xq", s_x, z_x], [f"{n}_xdq"])]
        codes = r["codes"]
        w_q = int_const(f"{n}_wq", r["w_bits"], True, codes.shape, codes.reshape(-1).tolist())
        s_w, z_w = const(f"{n}_s_w", np.array(r["w_scale"])), int_const(f"{n}_z_w", r["w_bits"], True, [], [0])
        nodes.append(helper.make_node("DequantizeLinear", [w_q, s_w, z_w], [f"{n}_w"]))
        scale, shift = r["channel"][0].numpy(), r["channel"][1].numpy()
        if r["kind"] == "conv":
            p = r["padding"]
            nodes.append(helper.make_node("Conv", [f"{n}_xdq", f"{n}_w"], [f"{n}_acc"], strides=[r["stride"]] * 2,
                                          pads=[p] * 4, group=r["groups"]))
            nodes += [helper.make_node("Mul", [f"{n}_acc", const(f"{n}_a", scale.reshape(1, -1, 1, 1))], [f"{n}_bn0"]),
                      helper.make_node("Add", [f"{n}_bn0", const(f"{n}_b", shift.reshape(1, -1, 1, 1))], [f"{n}_bn"]),
                      helper.make_node("Relu", [f"{n}_bn"], [f"{n}_y"])]
            x = f"{n}_y"
            if i + 1 < len(packed.layers) and packed.layers[i + 1]["kind"] == "linear":
                nodes += [helper.make_node("GlobalAveragePool", [x], [f"{n}_pool"]),
                          helper.make_node("Flatten", [f"{n}_pool"], [f"{n}_flat"])]
                x = f"{n}_flat"
        else:  # the classifier: a_c = 1, b_c is its bias
            nodes.append(helper.make_node("Gemm", [f"{n}_xdq", f"{n}_w", const(f"{n}_b", shift)], ["logits"], transB=1))
    first = packed.layers[0]
    graph = helper.make_graph(
        nodes, "mpqlab_qdq",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", first["shape"][1], None, None])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", packed.layers[-1]["shape"][0]])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="mpqlab")
    model.ir_version = min(model.ir_version, 10)  # what onnxruntime 1.2x reads
    checker.check_model(model)
    return model


def onnx_logits(model, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Run an ONNX model in onnxruntime on the CPU (one thread), batch by batch; float32 logits."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    out = [session.run(["logits"], {"image": images[i:i + batch_size].numpy()})[0]
           for i in range(0, len(images), batch_size)]
    return torch.from_numpy(np.concatenate(out))
