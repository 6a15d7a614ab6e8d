"""LIMPQ's own ResNet-50 indicators for notebook 10, the paper's search recipe, and LIMPQ's cost counter.

Tang et al., "Mixed-Precision Neural Network Quantization via Learned Layer-wise Importance", ECCV 2022,
released the importance indicators it learned for ResNet-50 on ImageNet
(``quantization_search/indicators/importance_indicators_resnet50.pkl``, MIT licence, Copyright (c) 2022
crowerly) and printed in its README the policy that ``search.py --wb 3 --ab 4 --cr 12.2 --alpha 2`` finds.
The development fixture ``../shared/fixtures/limpq_resnet50_indicators.json`` holds them as JSON with that
recipe; this script copies them, values unchanged, into ``data/results/limpq_resnet50_paper.json`` (an
indicator file ``load_indicators`` reads) and writes LIMPQ's licence beside it:

    python -m mpqlab.experiments.convert_limpq_resnet50 [--fixture PATH] [--out PATH]

The output is deterministic: no timestamps, keys in a fixed order. Besides the converter, the module keeps
what notebook 10 and the tests share about the paper's run:

- ``PAPER`` and ``solve_paper_policy``: the recipe (W3A4 BitOps, compression ratio 12.2, alpha 2);
- ``limpq_ilp``: LIMPQ's own formulation (every pair, banned bit-widths priced 1e8, raw costs) under
  PuLP's CBC, which stops 1e-5 short of the optimum unless CBC's cutoff increment is lowered;
- ``limpq_counted_macs``: LIMPQ's MAC counter, which does not floor output sizes.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pulp

from mpqlab.data import repo_data_dir
from mpqlab.errors import DataFileError
from mpqlab.limpq.indicators import Indicators, load_indicators, save_indicators
from mpqlab.limpq.search import SearchResult, allowed_bits, size_budget, solve_policy, uniform_budget

FIXTURE = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "limpq_resnet50_indicators.json"
OUT = repo_data_dir() / "results" / "limpq_resnet50_paper.json"
LICENSE_NAME = "LIMPQ-LICENSE.txt"

# LIMPQ's LICENSE file, verbatim (github.com/1hunters/LIMPQ): it must travel with the indicators.
LIMPQ_LICENSE = """MIT License

Copyright (c) 2022 crowerly

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""
LICENSE_HEADER = ("data/results/limpq_resnet50_paper.json holds the importance indicators released with LIMPQ\n"
                  "(Tang et al., ECCV 2022; github.com/1hunters/LIMPQ, quantization_search/indicators/\n"
                  "importance_indicators_resnet50.pkl), converted to JSON with values unchanged by\n"
                  "mpqlab/experiments/convert_limpq_resnet50.py. They are under LIMPQ's licence:\n\n")

# Keys copied from the fixture besides the indicator file's own (load_indicators ignores them).
KEPT_KEYS = ("model", "layer_macs_exact", "search", "expected", "notes")


@dataclass(frozen=True)
class PaperRecipe:
    """``search.py --model resnet50 --b 6 5 4 3 2 --wb 3 --ab 4 --cr 12.2 --alpha 2`` (LIMPQ's README)."""

    bit_options: tuple = (6, 5, 4, 3, 2)
    w_bits: int = 3  # BitOps budget: that of uniform W3A4 over the searchable layers
    a_bits: int = 4
    compression_ratio: float = 12.2  # size budget: 32 * (all params) / 12.2 bits
    alpha: float = 2.0  # objective sum_l s_a[l][b_a] + alpha * s_w[l][b_w]


PAPER = PaperRecipe()


def paper_budgets(ind: Indicators, recipe: PaperRecipe = PAPER) -> tuple[int, float]:
    """(BitOps budget, size budget in bits) of the recipe, counted as LIMPQ's search.py counts them."""
    return (uniform_budget(ind, recipe.w_bits, recipe.a_bits), size_budget(ind, recipe.compression_ratio))


def solve_paper_policy(ind: Indicators, solver: str = "highs", recipe: PaperRecipe = PAPER) -> SearchResult:
    """Our exact search with the paper's recipe (tests/test_search.py runs the same through the CLI)."""
    bitops, size = paper_budgets(ind, recipe)
    return solve_policy(ind, list(recipe.bit_options), bitops, size, recipe.alpha, solver=solver)


@dataclass(frozen=True)
class LimpqIlpResult:
    weight_bits: list[int]
    act_bits: list[int]
    objective: float  # sum_l s_a + alpha * s_w from the original indicators


def limpq_ilp(ind: Indicators, cbc_increment: float | None = None, recipe: PaperRecipe = PAPER,
              banned_price: float = 1e8) -> LimpqIlpResult:
    """LIMPQ's ILP as its search.py builds it, solved by PuLP's bundled CBC.

    Every (b_w, b_a) pair of every layer is a binary; a banned bit-width (``allowed_bits``) keeps its
    variable but its indicator is replaced by ``banned_price``; costs are the raw indicators. CBC runs
    with its default options unless ``cbc_increment`` is given: CBC's cutoff increment (default 1e-5,
    see ``cbc_default_increment``) makes it look only for solutions at least that much better than the
    best found so far, so a better policy closer than that is never searched for.
    """
    options = list(recipe.bit_options)

    def price(scores, bits):
        return scores[bits] if bits in allowed_bits(scores, options) else banned_price

    bitops_budget, size_budget_bits = paper_budgets(ind, recipe)
    problem = pulp.LpProblem("limpq_search_py", pulp.LpMinimize)
    x = {(n, bw, ba): problem.add_variable(f"x_{i}_{bw}_{ba}", 0, 1, cat=pulp.LpBinary)
         for i, n in enumerate(ind.layer_names) for bw in options for ba in options}
    problem += pulp.lpSum((price(ind.act_indicators[n], ba) + recipe.alpha * price(ind.weight_indicators[n], bw)) * v
                          for (n, bw, ba), v in x.items())
    for n in ind.layer_names:
        problem += pulp.lpSum(x[n, bw, ba] for bw in options for ba in options) == 1
    problem += pulp.lpSum(ind.layer_macs[n] * bw * ba * v for (n, bw, ba), v in x.items()) <= bitops_budget
    fixed = sum(f.params * f.w_bits for f in ind.fixed_layers.values())
    problem += fixed + pulp.lpSum(ind.layer_params[n] * bw * v for (n, bw, _), v in x.items()) <= size_budget_bits
    extra = [] if cbc_increment is None else [f"increment {cbc_increment:g}"]
    problem.solve(pulp.PULP_CBC_CMD(msg=False, options=extra))
    chosen = {n: (bw, ba) for (n, bw, ba), v in x.items() if (v.value() or 0) > 0.5}
    w_bits = [chosen[n][0] for n in ind.layer_names]
    a_bits = [chosen[n][1] for n in ind.layer_names]
    objective = sum(ind.act_indicators[n][a] + recipe.alpha * ind.weight_indicators[n][w]
                    for n, w, a in zip(ind.layer_names, w_bits, a_bits))
    return LimpqIlpResult(w_bits, a_bits, objective)


def cbc_default_increment() -> float:
    """CBC's default cutoff increment, as the bundled binary reports it (``cbc -increment??``)."""
    path = pulp.PULP_CBC_CMD().path
    text = subprocess.run([path, "-increment??"], capture_output=True, text=True, timeout=30).stdout
    found = re.search(r"current\s+([-+0-9.eE]+)", text)
    if found is None:
        raise DataFileError(f"could not read the default increment from {Path(path).name} -increment??: {text[-200:]!r}")
    return float(found.group(1))


def limpq_counted_macs(model, input_size=(1, 3, 224, 224)) -> dict[str, int]:
    """MACs per Conv2d and Linear layer, counted as LIMPQ's search.py counts them.

    A conv's output positions are ``int(((H + 2p - d(k-1) - 1)/s + 1) * ((W + 2p - d(k-1) - 1)/s + 1))``
    with float division: a stride-2 layer is not floored (112 px, 3x3, padding 1 gives 56.5 x 56.5 =
    3192 positions instead of 56 x 56 = 3136). ``mpqlab.cost.layer_table`` counts the true output size.
    """
    import torch
    from torch import nn

    counted, hooks = {}, []

    def record(name):
        def hook(module, inputs):
            if isinstance(module, nn.Linear):
                counted[name] = module.in_features * module.out_features
                return
            h, w = inputs[0].shape[-2:]
            (k_h, k_w), (s_h, s_w), (p_h, p_w), (d_h, d_w) = (module.kernel_size, module.stride,
                                                              module.padding, module.dilation)
            positions = int(((h + 2 * p_h - d_h * (k_h - 1) - 1) / s_h + 1)
                            * ((w + 2 * p_w - d_w * (k_w - 1) - 1) / s_w + 1))
            counted[name] = positions * module.out_channels * (module.in_channels // module.groups) * k_h * k_w
        return hook

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_pre_hook(record(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(*input_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return counted


def convert(fixture: Path = FIXTURE, out: Path = OUT) -> Path:
    """Write the indicator file and LIMPQ's licence beside it; returns the indicator file's path."""
    fixture = Path(fixture)
    ind = load_indicators(fixture)  # validated like any indicator file
    raw = json.loads(fixture.read_text(encoding="utf-8"))
    if "MIT License, Copyright (c) 2022 crowerly" not in raw.get("source", ""):
        raise DataFileError(f"{fixture}: its 'source' no longer names LIMPQ's MIT licence; check the fixture")
    extra = {
        "source": raw["source"],
        "licence": f"MIT License, Copyright (c) 2022 crowerly; the full notice is in {LICENSE_NAME} beside this file",
        "converted_by": "python -m mpqlab.experiments.convert_limpq_resnet50",
        **{key: raw[key] for key in KEPT_KEYS},
    }
    out = Path(out)
    save_indicators(out, ind, extra)
    from mpqlab.checkpoint import atomic_write_bytes

    atomic_write_bytes(out.parent / LICENSE_NAME, lambda f: f.write((LICENSE_HEADER + LIMPQ_LICENSE).encode()))
    return out


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixture", type=Path, default=FIXTURE, help="the JSON fixture with LIMPQ's indicators")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    out = convert(args.fixture, args.out)
    result = solve_paper_policy(load_indicators(out))
    print(f"wrote {out} and {out.parent / LICENSE_NAME}; the paper's recipe gives objective "
          f"{result.objective:.7f} at {result.bitops} BitOps")


if __name__ == "__main__":
    main()
