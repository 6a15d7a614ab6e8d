"""Notebook 11 self-checks: each passes the reference solution and fails typical wrong answers."""

import torch

from mpqlab.deploy.pack import pack_codes, unpack_codes
from mpqlab.exercises.nb11 import (
    check_layer_bytes, check_pack_codes, check_unpack_codes, layer_bytes_solution, pack_codes_solution,
    unpack_codes_solution,
)


def not_done(*args):
    raise NotImplementedError


def test_solutions_match_the_package():
    codes = torch.randint(0, 8, (50,), generator=torch.Generator().manual_seed(0)).tolist()
    packed = pack_codes_solution(codes, 3)
    assert packed == pack_codes(torch.tensor(codes), 3).tolist()
    assert unpack_codes_solution(packed, 3, 50) == unpack_codes(torch.tensor(packed, dtype=torch.uint8), 3, 50).tolist()


def test_pack_codes(capsys):
    assert check_pack_codes(pack_codes_solution)
    assert not check_pack_codes(not_done)
    assert not check_pack_codes(lambda codes, bits: list(codes))  # one byte per code: nothing packed

    def msb_first(codes, bits):  # each code's bits in the wrong order
        rev = [int(format(c, f"0{bits}b")[::-1], 2) for c in codes]
        return pack_codes_solution(rev, bits)

    assert not check_pack_codes(msb_first)
    assert not check_pack_codes(lambda codes, bits: pack_codes_solution(codes, bits)[:-1])  # drops the partial byte
    assert "FAIL" in capsys.readouterr().out


def test_unpack_codes():
    assert check_unpack_codes(unpack_codes_solution)
    assert not check_unpack_codes(not_done)
    assert not check_unpack_codes(lambda packed, bits, count: unpack_codes_solution(packed, bits, count + 1))  # padding
    assert not check_unpack_codes(lambda packed, bits, count: "5 2 7")


def test_layer_bytes():
    assert check_layer_bytes(layer_bytes_solution)
    assert not check_layer_bytes(not_done)
    assert not check_layer_bytes(lambda shape, bits: layer_bytes_solution(shape, 8))  # a byte per code
    assert not check_layer_bytes(lambda shape, bits: layer_bytes_solution(shape, bits) * 8)  # bits, not bytes
