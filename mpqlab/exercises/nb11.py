"""Exercises of notebook 11 (from a policy to bytes): pack 3-bit codes, unpack them, and a layer's packed size."""

from __future__ import annotations

import torch

from mpqlab.deploy.pack import pack_codes, packed_bytes, unpack_codes
from mpqlab.exercises import FAILED, describe, exercise


def pack_codes_solution(codes, bits):
    # lay every code's bits end to end, least significant first, then cut the bit string into bytes
    stream = [(code >> k) & 1 for code in codes for k in range(bits)]
    stream += [0] * (-len(stream) % 8)
    return [sum(bit << j for j, bit in enumerate(stream[i:i + 8])) for i in range(0, len(stream), 8)]


def unpack_codes_solution(packed, bits, count):
    # the same bit string read back: bit j of the string is bit j % 8 of byte j // 8
    stream = [(byte >> j) & 1 for byte in packed for j in range(8)]
    return [sum(stream[i * bits + k] << k for k in range(bits)) for i in range(count)]


def layer_bytes_solution(shape, w_bits):
    # params * w_bits bits, rounded up to whole bytes once for the whole layer (not once per code)
    params = 1
    for d in shape:
        params *= d
    return (params * w_bits + 7) // 8


def _as_ints(value) -> list[int] | None:
    """A list of Python ints from a list, tuple, bytes or integer tensor; None if it is not one."""
    if isinstance(value, torch.Tensor):
        value = value.reshape(-1).tolist()
    if isinstance(value, (bytes, bytearray)):
        value = list(value)
    if not isinstance(value, (list, tuple)) or not all(float(v).is_integer() for v in value):
        return None
    return [int(v) for v in value]


def _code_cases():
    g = torch.Generator().manual_seed(11)
    cases = [([5, 2, 7], 3), ([0, 7, 7, 0, 1, 6, 3, 4], 3), ([1], 3)]
    for bits, count in [(3, 13), (3, 21), (5, 9), (6, 7), (2, 5), (8, 4)]:
        cases.append((torch.randint(0, 2**bits, (count,), generator=g).tolist(), bits))
    return cases


@exercise("pack b-bit codes", pack_codes_solution,
          hint="code i takes bits i*b .. i*b + b - 1 of one long bit string, least significant bit first; "
               "bit j of the string is bit j % 8 of byte j // 8; pad the last byte with zeros")
def check_pack_codes(c, fn) -> None:
    """Exercise 1: ``fn(codes, bits)`` returns the packed bytes of a list of unsigned codes, as a list of ints."""
    for codes, bits in _code_cases():
        got = c.run(fn, codes, bits)
        if got is FAILED:
            break
        want = pack_codes(torch.tensor(codes), bits).tolist()
        c.expect(_as_ints(got) == want, f"fn({codes}, {bits}): expected {want}, got {describe(got)}")


@exercise("unpack b-bit codes", unpack_codes_solution,
          hint="read bit j of the string as (packed[j // 8] >> (j % 8)) & 1; code i is the sum of "
               "bit (i*b + k) << k over k; stop after count codes (the padding is not a code)")
def check_unpack_codes(c, fn) -> None:
    """Exercise 2: ``fn(packed, bits, count)`` returns the ``count`` codes that ``packed`` (a list of bytes) holds."""
    for codes, bits in _code_cases():
        packed = pack_codes(torch.tensor(codes), bits).tolist()
        got = c.run(fn, packed, bits, len(codes))
        if got is FAILED:
            break
        want = unpack_codes(torch.tensor(packed, dtype=torch.uint8), bits, len(codes)).tolist()
        c.expect(_as_ints(got) == want, f"fn({packed}, {bits}, {len(codes)}): expected {want}, got {describe(got)}")


@exercise("packed size of a layer", layer_bytes_solution,
          hint="multiply the weight's dimensions for the parameter count, times w_bits, then round up to whole "
               "bytes once: (bits + 7) // 8")
def check_layer_bytes(c, fn) -> None:
    """Exercise 3: ``fn(shape, w_bits)`` returns the bytes a layer's packed weight codes take."""
    for shape, bits in [((64, 64, 1, 1), 3), ((8, 1, 3, 3), 5), ((10, 256), 6), ((3, 1, 3, 3), 3), ((7,), 2)]:
        got = c.run(fn, shape, bits)
        if got is FAILED:
            break
        count = 1
        for d in shape:
            count *= d
        c.close(got, packed_bytes(count, bits), f"fn({shape}, {bits})", rel=0, abs_=0)
