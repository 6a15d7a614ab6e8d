"""LIMPQ's released ResNet-50 indicators as shipped for notebook 10: the file, its licence, its conversion,
the published policy, CBC's 1e-5 miss, and LIMPQ's MAC counter against the workbook's."""

from __future__ import annotations

import json

import pytest

from mpqlab.cost import bitops, layer_table
from mpqlab.data import repo_data_dir
from mpqlab.experiments.convert_limpq_resnet50 import (
    FIXTURE, LICENSE_NAME, PAPER, cbc_default_increment, convert, limpq_counted_macs, limpq_ilp,
    paper_budgets, solve_paper_policy,
)
from mpqlab.limpq.indicators import load_indicators

SHIPPED = repo_data_dir() / "results" / "limpq_resnet50_paper.json"
needs_fixture = pytest.mark.skipif(not FIXTURE.exists(), reason=f"LIMPQ fixture not found at {FIXTURE}")


@pytest.fixture(scope="module")
def ind():
    return load_indicators(SHIPPED)


@pytest.fixture(scope="module")
def raw():
    return json.loads(SHIPPED.read_text())


def test_shipped_file_loads_and_keeps_the_recipe_and_notice(ind, raw):
    assert len(ind.layer_names) == 52 and list(ind.fixed_layers) == ["conv1", "fc"]
    assert raw["search"]["alpha"] == PAPER.alpha == 2.0 and raw["search"]["bit_options"] == list(PAPER.bit_options)
    assert "alpha * weight_indicators" in raw["search"]["objective"]
    assert "MIT License, Copyright (c) 2022 crowerly" in raw["source"] and LICENSE_NAME in raw["licence"]
    notice = (SHIPPED.parent / LICENSE_NAME).read_text()
    assert "Copyright (c) 2022 crowerly" in notice
    assert "Permission is hereby granted, free of charge" in notice and 'THE SOFTWARE IS PROVIDED "AS IS"' in notice


@needs_fixture
def test_conversion_is_deterministic_and_gives_the_shipped_bytes(tmp_path):
    first = convert(FIXTURE, tmp_path / "a" / "paper.json")
    second = convert(FIXTURE, tmp_path / "b" / "paper.json")
    assert first.read_bytes() == second.read_bytes() == SHIPPED.read_bytes()
    assert (first.parent / LICENSE_NAME).read_bytes() == (SHIPPED.parent / LICENSE_NAME).read_bytes()
    assert load_indicators(first) == load_indicators(FIXTURE)  # values unchanged


def test_paper_recipe_gives_the_published_policy(ind, raw):
    expected = raw["expected"]
    result = solve_paper_policy(ind)
    assert result.weight_bits == expected["weight_bits"] and result.act_bits == expected["act_bits"]
    assert round(result.objective, 7) == expected["objective"] == 4.6174392
    assert result.bitops == expected["bitops_used"] and paper_budgets(ind)[0] == expected["bitops_budget"]
    assert round(result.compression_ratio, 3) == expected["compression_ratio"]


@pytest.mark.filterwarnings("ignore:PULP_CBC_CMD is deprecated")
def test_limpq_ilp_under_default_cbc_stops_short_by_less_than_the_increment(ind, raw):
    published = raw["expected"]["objective"]
    default = limpq_ilp(ind)
    assert 0 < default.objective - published < cbc_default_increment() == 1e-5
    assert round(default.objective, 7) == 4.6174492
    fixed = limpq_ilp(ind, cbc_increment=1e-9)
    assert round(fixed.objective, 7) == published
    assert fixed.weight_bits == raw["expected"]["weight_bits"] and fixed.act_bits == raw["expected"]["act_bits"]


def test_limpq_counter_gives_the_files_macs_and_layer_table_the_exact_ones(ind, raw):
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet50()  # no weights: only the shapes count
    counted = limpq_counted_macs(model)
    table = layer_table(model, (1, 3, 224, 224))
    assert {n: counted[n] for n in ind.layer_names} == ind.layer_macs
    assert {n: int(table.macs[n]) for n in ind.layer_names} == raw["layer_macs_exact"]
    assert {n: int(table.params[n]) for n in ind.layer_names} == ind.layer_params
    assert counted["conv1"] == ind.fixed_layers["conv1"].macs and counted["fc"] == ind.fixed_layers["fc"].macs


def test_limpq_counter_explains_its_9_68_g_for_w4a4_mobilenet_v1():
    from mpqlab.models import mobilenet_v1

    model = mobilenet_v1()
    table = layer_table(model, (1, 3, 224, 224))
    counted = limpq_counted_macs(model)
    first, last = table.index[0], table.index[-1]
    limpq = sum(counted[n] * (8 * 8 if n in (first, last) else 4 * 4) for n in table.index)
    assert round(limpq / 1e9, 2) == 9.68
    assert round(bitops(table, (4, 4), first_last_bits=8) / 1e9, 3) == 9.669
    stride2 = [n for n in table.index if table.stride[n] == 2]
    assert [n for n in table.index if counted[n] != table.macs[n]] == stride2  # only the stride-2 layers differ


def test_limpq_counter_on_a_stride_two_layer_by_hand():
    from torch import nn

    conv = nn.Sequential(nn.Conv2d(1, 1, 3, stride=2, padding=1, bias=False))
    # (112 + 2 - 2 - 1) / 2 + 1 = 56.5 per side, 56.5^2 = 3192.25 -> 3192 positions, against 56 x 56 = 3136
    assert limpq_counted_macs(conv, (1, 1, 112, 112))["0"] == 3192 * 9
    assert int(layer_table(conv, (1, 1, 112, 112)).macs["0"]) == 3136 * 9


def test_the_converter_refuses_a_fixture_without_the_licence(tmp_path):
    from mpqlab.errors import DataFileError
    from mpqlab.limpq.indicators import indicators_to_dict, synthetic_indicators

    path = tmp_path / "fixture.json"
    path.write_text(json.dumps({**indicators_to_dict(synthetic_indicators(3)), "source": "somewhere"}))
    with pytest.raises(DataFileError, match="MIT licence"):
        convert(path, tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()
