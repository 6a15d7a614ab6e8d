"""From a policy to bytes (notebook 11): pack a fine-tuned LSQ model into one small file and run it with integers.

- ``pack``           bit packing of b-bit codes, b = 1..8, with no byte rounding
- ``fold``           LSQ model -> integer weight codes, step sizes and BN folded per channel
- ``container``      the safetensors file: write, read, validate, and its size against the cost model
- ``integer_model``  integer-only execution (int32 accumulators, fixed-point requantization)
- ``onnx_qdq``       the 8-bit model as an ONNX QuantizeLinear/DequantizeLinear graph, run in onnxruntime
"""

from mpqlab.deploy.container import PackedModel, export_model, load_packed, overhead_bytes, packed_size_report
from mpqlab.deploy.fold import fold_model, lsq_model_from_state, policy_from_state
from mpqlab.deploy.integer_model import IntegerModel, compare_integer
from mpqlab.deploy.pack import pack_codes, packed_bytes, unpack_codes

__all__ = ["PackedModel", "export_model", "load_packed", "overhead_bytes", "packed_size_report", "fold_model",
           "lsq_model_from_state", "policy_from_state", "IntegerModel", "compare_integer", "pack_codes",
           "packed_bytes", "unpack_codes"]
