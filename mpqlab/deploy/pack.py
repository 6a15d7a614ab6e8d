"""Bit packing: n integer codes of b bits each stored in ceil(n * b / 8) bytes, none rounded up to a byte.

Code i occupies bits ``i*b .. i*b + b - 1`` of one long little-endian bit string: bit j of the string is
bit ``j % 8`` of byte ``j // 8``, and bit k of a code is its k-th least significant bit. So three 3-bit
codes 5, 2, 7 (binary 101, 010, 111) become the bit string 1 0 1 | 0 1 0 | 1 1 1 (least significant bit
first) and the bytes 0b11010101, 0b00000001 = [213, 1]: 9 bits in 2 bytes where int8 storage takes 3.
The last byte is padded with zeros. This is the layout of ``numpy.packbits(..., bitorder="little")``
applied to the codes' bits; GGML and BitBLAS pack low-bit weights the same way (in blocks).

Codes are unsigned (0 .. 2^b - 1); a signed LSQ weight code q in [-2^(b-1), 2^(b-1) - 1] is stored as
``q - q_min`` (``mpqlab.deploy.fold``). Introduced in notebook 11.
"""

from __future__ import annotations

import torch

from mpqlab.errors import BitWidthError, QuantParamError, check_bits


def packed_bytes(count: int, bits: int) -> int:
    """``ceil(count * bits / 8)``: the bytes that ``count`` codes of ``bits`` bits take when packed."""
    return (count * bits + 7) // 8


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned integer codes (any shape, values 0 .. 2^bits - 1) into a flat uint8 tensor.

    >>> pack_codes(torch.tensor([5, 2, 7]), 3).tolist()
    [213, 1]
    """
    bits = check_bits(bits, name="bits", low=1, high=8)
    codes = torch.as_tensor(codes).reshape(-1).long()
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 2**bits):
        raise QuantParamError(f"{bits}-bit codes must lie in 0..{2**bits - 1}, got values from "
                              f"{int(codes.min())} to {int(codes.max())}")
    place = torch.arange(bits)                                  # (b,) bit k of each code
    stream = ((codes[:, None] >> place) & 1).reshape(-1)        # (n*b,) bits, least significant first
    stream = torch.nn.functional.pad(stream, (0, (-stream.numel()) % 8))  # zero-pad to whole bytes
    weights = 2 ** torch.arange(8)                              # (8,) bit j of a byte is worth 2^j
    return (stream.reshape(-1, 8) * weights).sum(dim=1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The ``count`` codes that ``pack_codes(codes, bits)`` packed into ``packed``, as an int64 tensor.

    >>> unpack_codes(torch.tensor([213, 1], dtype=torch.uint8), 3, 3).tolist()
    [5, 2, 7]
    """
    bits = check_bits(bits, name="bits", low=1, high=8)
    packed = torch.as_tensor(packed)
    if packed.dtype != torch.uint8:
        raise QuantParamError(f"packed codes must be a uint8 tensor, got {packed.dtype}")
    if packed.numel() != packed_bytes(count, bits):
        raise BitWidthError(f"{count} codes of {bits} bits take {packed_bytes(count, bits)} bytes, "
                            f"got {packed.numel()}")
    stream = ((packed.reshape(-1, 1).long() >> torch.arange(8)) & 1).reshape(-1)  # (8 * bytes,) bits
    rows = stream[: count * bits].reshape(count, bits)                           # (n, b)
    return (rows * 2 ** torch.arange(bits)).sum(dim=1)
