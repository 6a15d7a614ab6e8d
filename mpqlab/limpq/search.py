"""LIMPQ's bit-width search: one small integer linear program (ILP), solved exactly.

Tang et al., "Mixed-Precision Neural Network Quantization via Learned Layer-wise Importance",
ECCV 2022. With learned indicators s_w[l][b] (weights) and s_a[l][b] (activations), pick one pair
(b_w, b_a) per searchable layer l from the bit options:

    minimise    sum_l  s_a[l][b_a] + alpha * s_w[l][b_w]                (alpha = 2 in LIMPQ's release)
    subject to  sum_l  macs_l * b_w * b_a                         <= bitops_budget      (BitOps)
                sum_f  params_f * w_bits_f + sum_l params_l * b_w <= size_budget_bits   (model size)

f runs over the fixed layers (first and last, 8 bits). Their BitOps would add the same constant to
both sides of the BitOps row, so, like LIMPQ's script, ``bitops`` counts the searchable layers only.
As an ILP: a binary x[l, b_w, b_a] per allowed pair, with sum_{b_w, b_a} x[l, b_w, b_a] = 1 per layer.

Exactly means exactly: PuLP's bundled CBC with default options may stop up to 1e-5 short of the
optimum (its cutoff increment); on LIMPQ's own ResNet-50 ILP it returns 4.6174492 instead of the
published 4.6174392 (benchmarks/bench_search.py shows both). We call HiGHS with zero gap tolerances
on costs normalised to [0, 1], and recompute the objective from the indicators.

Fast enough for a slider: before the ILP, its LP relaxation gives a lower bound and a feasible
policy nearby; every pair whose reduced cost proves it cannot beat that policy is dropped
(``reduced_cost_filter``). The ILP left is a fraction of the size, with the same optimum, and solves
about 2-3x faster (MobileNetV1-small: ~0.05 s instead of ~0.13 s, benchmarks/bench_search.py).
"""

from __future__ import annotations

import itertools
import math
import numbers
import time
from dataclasses import asdict, dataclass, field

import pulp

from mpqlab.errors import BitWidthError, InfeasibleBudgetError, QuantParamError, check_bits, check_positive
from mpqlab.limpq.indicators import Indicators, check_indicators


def check_bit_options(indicators: Indicators, bit_options) -> list[int]:
    """The bit options as distinct ints, highest first; each must have an indicator in every layer."""
    if isinstance(bit_options, (str, bytes)) or not hasattr(bit_options, "__iter__"):
        raise BitWidthError(f"bit_options must be a list of bit-widths, e.g. [6, 5, 4, 3, 2], got {bit_options!r}")
    options = sorted({check_bits(b, name="bit option") for b in bit_options}, reverse=True)
    if not options:
        raise BitWidthError("bit_options is empty: give at least one bit-width, e.g. 6 5 4 3 2")
    for table, side in ((indicators.weight_indicators, "weight"), (indicators.act_indicators, "act")):
        for name in indicators.layer_names:
            missing = [b for b in options if b not in table[name]]
            if missing:
                have = sorted(table[name], reverse=True)
                raise BitWidthError(f"bit option(s) {missing} have no {side} indicator for layer {name!r}; "
                                    f"the indicators cover bit-widths {have}")
    return options


def allowed_bits(scores: dict[int, float], options: list[int]) -> list[int]:
    """Drop "wrong-way" bit-widths: ``b_lo`` is banned if s[b_lo] < s[b_hi] for the next higher option.

    Fewer bits should mean a larger indicator; LIMPQ's code treats a lower bit-width whose indicator
    is smaller as an artefact of joint training and never picks it (its rule, s[b-1] < s[b] bans
    b-1, is this one for consecutive options such as 6 5 4 3 2). Compared on the original values,
    so one ban does not cascade. The highest option always stays.
    """
    ordered = sorted(options, reverse=True)
    banned = {lo for hi, lo in zip(ordered, ordered[1:]) if scores[lo] < scores[hi]}
    return [b for b in ordered if b not in banned]


def uniform_budget(indicators: Indicators, w_bits: int, a_bits: int) -> int:
    """BitOps of the uniform policy W{w_bits}A{a_bits}: sum_l macs_l * w_bits * a_bits (searchable layers)."""
    w_bits, a_bits = check_bits(w_bits, name="w_bits"), check_bits(a_bits, name="a_bits")
    return sum(indicators.layer_macs[n] * w_bits * a_bits for n in indicators.layer_names)


def size_budget(indicators: Indicators, compression_ratio: float) -> float:
    """Model-size budget in bits for a compression ratio r: 32 * (total params) / r."""
    return 32 * indicators.total_params() / check_positive(compression_ratio, name="compression_ratio")


def fixed_size_bits(indicators: Indicators) -> int:
    """sum_f params_f * w_bits_f: what the fixed layers weigh, whatever the search picks."""
    return sum(f.params * f.w_bits for f in indicators.fixed_layers.values())


def min_bitops(indicators: Indicators, bit_options) -> int:
    """Smallest reachable BitOps: sum_l macs_l * min allowed b_w * min allowed b_a."""
    options = check_bit_options(indicators, bit_options)
    return sum(indicators.layer_macs[n] * min(allowed_bits(indicators.weight_indicators[n], options))
               * min(allowed_bits(indicators.act_indicators[n], options)) for n in indicators.layer_names)


def min_size_bits(indicators: Indicators, bit_options) -> int:
    """Smallest reachable model size: fixed layers + sum_l params_l * min allowed b_w."""
    options = check_bit_options(indicators, bit_options)
    return fixed_size_bits(indicators) + sum(
        indicators.layer_params[n] * min(allowed_bits(indicators.weight_indicators[n], options))
        for n in indicators.layer_names)


@dataclass(frozen=True)
class SearchResult:
    """A searched policy and what it costs."""

    layer_names: list[str]
    weight_bits: list[int]  # b_w per searchable layer, in layer order
    act_bits: list[int]  # b_a per searchable layer, in layer order
    objective: float  # sum_l s_a + alpha * s_w, recomputed from the indicators
    bitops: int  # sum_l macs_l * b_w * b_a over the searchable layers
    size_bits: int  # weight storage, fixed layers included
    compression_ratio: float  # 32 * total params / size_bits
    bitops_budget: int | float | None  # the budgets solved for (None: no such constraint)
    size_budget_bits: int | float | None
    status: str  # the solver's status, "Optimal"
    solve_time: float  # wall seconds spent in the solver
    fixed_layers: dict[str, tuple[int, int]] = field(default_factory=dict)  # not searched

    @property
    def policy(self) -> dict[str, tuple[int, int]]:
        """``{layer: (w_bits, a_bits)}``, fixed layers included: ready for ``quantize_model``."""
        return {**dict(zip(self.layer_names, zip(self.weight_bits, self.act_bits))), **self.fixed_layers}

    def to_dict(self) -> dict:
        """JSON-ready summary (what ``python -m mpqlab search`` prints)."""
        d = asdict(self)
        d["fixed_layers"] = {n: list(p) for n, p in self.fixed_layers.items()}
        return d


def undominated_pairs(ind: Indicators, name: str, options: list[int], alpha: float,
                      with_size: bool = True) -> list[tuple[int, int]]:
    """The allowed (b_w, b_a) of one layer that no other allowed pair dominates.

    Pair q dominates p if q costs no more (s_a + alpha * s_w), needs no more BitOps (b_w * b_a) and,
    when a size budget is set, no more weight bits (b_w), and differs from p in at least one of them
    (of exact ties the first, highest-bit pair stays). Swapping p for q in any feasible policy keeps it
    feasible and never raises the objective, so the optimum uses undominated pairs only: the ILP
    stays exact and gets smaller (e.g. (2, 6), (3, 4), (4, 3), (6, 2) have near-equal BitOps).
    """
    s_w, s_a = ind.weight_indicators[name], ind.act_indicators[name]
    pairs = [(bw, ba) for bw in allowed_bits(s_w, options) for ba in allowed_bits(s_a, options)]
    # In order of (cost, BitOps, size), every dominator of p comes before p, and dominance is
    # transitive: comparing p with the pairs kept so far is enough.
    order = sorted(pairs, key=lambda p: (s_a[p[1]] + alpha * s_w[p[0]], p[0] * p[1], p[0] if with_size else 0,
                                         -p[0], -p[1]))
    kept: list[tuple[int, int]] = []
    for bw, ba in order:
        if not any(kw * ka <= bw * ba and (kw <= bw or not with_size) for kw, ka in kept):
            kept.append((bw, ba))
    chosen = set(kept)
    return [p for p in pairs if p in chosen]


def _exact_row(coeffs: list[int], rhs: float) -> tuple[list[int], int]:
    """``sum c_i x_i <= rhs`` with integer c_i, divided by g = gcd(c) and rounded down on the right.

    Exact for integer x (the left side is a multiple of g), and it brings BitOps of ~1e10 down to
    numbers the floating-point solver handles without tolerance slips.
    """
    g = math.gcd(*coeffs) or 1
    return [c // g for c in coeffs], math.floor(rhs) // g


class QuietHiGHS(pulp.HiGHS):
    """PuLP's HiGHS solver, silenced before HiGHS can print its banner.

    highspy 1.16's ``Highs()`` registers a callback while it is built, and HiGHS prints its banner
    ("Running HiGHS 1.16.0 ...") from C at that moment, on the process's stdout, before PuLP can
    turn ``msg=False`` into ``output_flag=False``; the banner then broke the JSON that
    ``python -m mpqlab search`` prints. highspy's core class ``_Highs`` (what ``Highs`` extends,
    with every method PuLP calls) registers no callback: we build that, set ``output_flag=False``
    first, then the options PuLP's ``createAndConfigureSolver`` sets. No callbacks, none needed here.
    """

    def createAndConfigureSolver(self, lp):
        import highspy

        # A highspy without ``_Highs`` would print the banner again; `make test-latest` catches that drift.
        core = getattr(highspy, "_Highs", highspy.Highs)
        lp.solverModel = model = core()
        model.setOptionValue("output_flag", False)  # first: every later call may log
        options = {"mip_rel_gap": self.gapRel, "mip_abs_gap": self.gapAbs, "threads": self.threads,
                   "time_limit": None if self.timeLimit is None else float(self.timeLimit), **self.optionsDict}
        for key, value in options.items():
            if value is not None:
                model.setOptionValue(key, value)


def _solver(name: str, mip: bool = True):
    if name == "highs":  # HiGHS through its Python API (highspy): no binary needed, zero gaps = exact
        # Restarts after reduced-cost fixing cost more CPU than they save on these small ILPs
        # (about 1.5x when this was written, HiGHS 1.15). Exactness is unaffected.
        return QuietHiGHS(mip=mip, msg=False, gapRel=0.0, gapAbs=0.0, mip_allow_restart=False, threads=1)
    if name == "cbc":  # PuLP's bundled CBC with default options, as LIMPQ's script runs it
        return pulp.PULP_CBC_CMD(mip=mip, msg=False)
    raise QuantParamError(f"solver must be 'highs' or 'cbc', got {name!r}")


def _solve(layer_of: list[int], costs: list[float], rows: dict[str, tuple[list[int], int]], solver: str,
           relax: bool = False):
    """min sum_j costs_j x_j  s.t.  sum_{j in layer l} x_j = 1 for every l,  row . x <= rhs per budget row.

    x_j binary, or in [0, 1] if ``relax`` (the LP relaxation). Returns (status, x, multipliers) where
    ``multipliers[r] >= 0`` is the budget row's dual price (0 when the solver gives none).
    """
    problem = pulp.LpProblem("limpq_bit_widths", pulp.LpMinimize)
    cat = pulp.LpContinuous if relax else pulp.LpBinary
    x = [problem.add_variable(f"x_{j}", 0, 1, cat=cat) for j in range(len(costs))]
    problem += pulp.LpAffineExpression(list(zip(x, costs)))
    per_layer: dict[int, list] = {}
    for v, layer in zip(x, layer_of):
        per_layer.setdefault(layer, []).append((v, 1))
    for layer, terms in per_layer.items():
        problem += pulp.LpAffineExpression(terms) == 1, f"one_pair_{layer}"
    budget_rows = {}
    for name, (row, rhs) in rows.items():
        budget_rows[name] = pulp.LpAffineExpression(list(zip(x, row))) <= rhs
        problem += budget_rows[name], name
    problem.solve(_solver(solver, mip=not relax))
    # A <= row's dual is <= 0 in a minimisation; any sign slip only weakens the bound (clamped at 0).
    multipliers = {name: max(0.0, -(c.pi or 0.0)) for name, c in budget_rows.items()}
    return pulp.LpStatus[problem.status], [v.value() or 0.0 for v in x], multipliers


def _feasible_cost(layer_of, costs, rows, x_lp) -> float:
    """Cost of a good feasible policy read off the LP optimum (inf if none is found; speed only).

    A layer whose LP choice is whole keeps it; the (few) fractional layers try every combination of
    their pairs; then single-layer swaps that lower the cost and fit the budgets, best first.
    """
    options: dict[int, list[int]] = {}
    for j, layer in enumerate(layer_of):
        options.setdefault(layer, []).append(j)
    pick = {layer: j for layer, js in options.items() for j in js if x_lp[j] > 1 - 1e-6}
    open_layers = [layer for layer in options if layer not in pick]
    if math.prod(len(options[layer]) for layer in open_layers) > 4096:
        return math.inf

    def fits(choice):
        return all(sum(row[j] for j in choice) <= rhs for row, rhs in rows.values())

    combos = [c for c in itertools.product(*(options[layer] for layer in open_layers))
              if fits(list(pick.values()) + list(c))]
    if not combos:
        return math.inf
    pick.update(zip(open_layers, min(combos, key=lambda c: sum(costs[j] for j in c))))
    slack = {name: rhs - sum(row[j] for j in pick.values()) for name, (row, rhs) in rows.items()}
    while True:
        moves = [(costs[j] - costs[pick[layer]], j) for j, layer in enumerate(layer_of)
                 if costs[j] < costs[pick[layer]]
                 and all(row[j] - row[pick[layer]] <= slack[name] for name, (row, _) in rows.items())]
        if not moves:
            return sum(costs[j] for j in pick.values())
        j = min(moves)[1]
        for name, (row, _) in rows.items():
            slack[name] -= row[j] - row[pick[layer_of[j]]]
        pick[layer_of[j]] = j


def reduced_cost_filter(layer_of, costs, rows, multipliers, upper: float) -> list[bool]:
    """Which pairs can still be in a policy of cost <= ``upper`` (the rest provably cannot).

    Lagrangian bound: for multipliers m_r >= 0 and any feasible x (so rhs_r - row_r . x >= 0),

        cost(x) >= sum_l min_j (c_j + sum_r m_r row_rj) - sum_r m_r rhs_r = L,

    and a policy that uses pair j costs at least L + rc_j, rc_j = (c_j + sum_r m_r row_rj) minus its
    layer's minimum. So pair j with L + rc_j > upper (the cost of a known feasible policy) is never
    optimal. Valid for any m >= 0; the LP's dual prices make it tight. (Reduced-cost fixing, a
    textbook step of branch and bound, done here once before the ILP.)
    """
    priced = [c + sum(m * rows[name][0][j] for name, m in multipliers.items()) for j, c in enumerate(costs)]
    lowest: dict[int, float] = {}
    for layer, p in zip(layer_of, priced):
        lowest[layer] = min(lowest.get(layer, p), p)
    bound = sum(lowest.values()) - sum(m * rows[name][1] for name, m in multipliers.items())
    slack = 1e-9 * (1 + abs(bound) + sum(lowest.values()))  # float rounding in the sums above
    return [bound + p - lowest[layer] <= upper + slack for layer, p in zip(layer_of, priced)]


def _budget(value, name: str):
    """A positive finite number, kept an int if it is one (BitOps print exactly)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise QuantParamError(f"{name} must be a positive number, got {value!r}")
    check_positive(value, name=name)
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def _check_budgets(ind: Indicators, options: list[int], bitops_budget, size_budget_bits):
    """Budgets (or None), or InfeasibleBudgetError naming the smallest reachable one if too small."""
    if bitops_budget is not None:
        bitops_budget = _budget(bitops_budget, "bitops_budget")
        lowest = min_bitops(ind, options)
        if bitops_budget < lowest:
            raise InfeasibleBudgetError(f"BitOps budget {bitops_budget:.6g} is below {lowest} (= {lowest:.4g}), "
                                        f"the smallest reachable with bit options {options}")
    if size_budget_bits is not None:
        size_budget_bits = _budget(size_budget_bits, "size_budget_bits")
        lowest = min_size_bits(ind, options)
        if size_budget_bits < lowest:
            raise InfeasibleBudgetError(
                f"model-size budget {size_budget_bits:.6g} bits is below {lowest} bits, the smallest reachable "
                f"with bit options {options} (compression ratio at most {32 * ind.total_params() / lowest:.4f})")
    return bitops_budget, size_budget_bits


def solve_policy(indicators: Indicators, bit_options, bitops_budget: float | None = None,
                 size_budget_bits: float | None = None, alpha: float = 2.0,
                 solver: str = "highs", presolve: bool = True) -> SearchResult:
    """Solve LIMPQ's ILP (module docstring) for the given budgets; ``None`` leaves a budget out.

    ``bitops_budget`` counts the searchable layers (see ``uniform_budget``); ``size_budget_bits``
    counts the whole model (see ``size_budget``). ``solver="cbc"`` is there for comparison only.
    ``presolve=False`` skips the exact reduction (``reduced_cost_filter``) and hands the solver every
    undominated pair: the same optimum, about 2-3x slower (tests and benchmarks compare the two).
    ``indicators`` are checked like an indicator file first (``check_indicators``): a NaN would
    otherwise come back as ``objective=nan``, or stall HiGHS when a budget is set.
    """
    ind = check_indicators(indicators, where="indicators passed to solve_policy")
    names = ind.layer_names
    options = check_bit_options(ind, bit_options)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 <= alpha < math.inf:
        raise QuantParamError(f"alpha must be a finite number >= 0, got {alpha!r}")
    alpha = float(alpha)
    bitops_budget, size_budget_bits = _check_budgets(ind, options, bitops_budget, size_budget_bits)

    # One binary per layer and allowed pair (b_w, b_a), with cost c = s_a[b_a] + alpha * s_w[b_w].
    pairs = [(i, bw, ba) for i, n in enumerate(names)
             for bw, ba in undominated_pairs(ind, n, options, alpha, size_budget_bits is not None)]
    cost = [ind.act_indicators[names[i]][ba] + alpha * ind.weight_indicators[names[i]][bw] for i, bw, ba in pairs]
    # Finite indicators can still overflow once weighted and summed (2 * 1e308). Every shifted cost and
    # every policy's objective is at most the sum of all |c|: if that is finite, so are they.
    if not math.isfinite(sum(abs(c) for c in cost)):
        largest = max(abs(v) for table in (ind.weight_indicators, ind.act_indicators)
                      for row in table.values() for v in row.values())
        raise QuantParamError(f"s_a + alpha * s_w overflows a float for alpha={alpha} (largest indicator "
                              f"{largest:.3g}); rescale the indicators or alpha")
    # Shift each layer's costs to start at 0 and scale all into [0, 1]: the same argmin, but the
    # solver's absolute tolerances (~1e-7) are then far below the gaps between policies.
    low: dict[int, float] = {}
    for (i, _, _), c in zip(pairs, cost):
        low[i] = min(low.get(i, c), c)
    shifted = [c - low[i] for (i, _, _), c in zip(pairs, cost)]
    top = max(shifted) or 1.0
    rows = {}
    if bitops_budget is not None:
        rows["bitops"] = _exact_row([ind.layer_macs[names[i]] * bw * ba for i, bw, ba in pairs], bitops_budget)
    if size_budget_bits is not None:
        rows["size"] = _exact_row([ind.layer_params[names[i]] * bw for i, bw, _ in pairs],
                                  size_budget_bits - fixed_size_bits(ind))
    layer_of, costs = [i for i, _, _ in pairs], [s / top for s in shifted]

    start = time.perf_counter()
    keep = list(range(len(pairs)))
    if presolve and rows:  # LP relaxation -> a feasible policy and a bound -> drop pairs that cannot be optimal
        lp_status, x_lp, multipliers = _solve(layer_of, costs, rows, solver, relax=True)
        if lp_status == "Optimal":
            mask = reduced_cost_filter(layer_of, costs, rows, multipliers,
                                       _feasible_cost(layer_of, costs, rows, x_lp))
            keep = [j for j, k in enumerate(mask) if k]
    status, x, _ = _solve([layer_of[j] for j in keep], [costs[j] for j in keep],
                          {name: ([row[j] for j in keep], rhs) for name, (row, rhs) in rows.items()}, solver)
    solve_time = time.perf_counter() - start
    if status != "Optimal":  # budgets were checked above, so this is the solver failing, not the user
        raise InfeasibleBudgetError(f"the ILP solver ({solver}) returned status {status!r}")

    chosen: dict[int, tuple] = {}
    for value, j in zip(x, keep):  # the largest x per layer: robust to 0.9999999
        i, bw, ba = pairs[j]
        if i not in chosen or value > chosen[i][0]:
            chosen[i] = (value, bw, ba)
    w_bits = [chosen[i][1] for i in range(len(names))]
    a_bits = [chosen[i][2] for i in range(len(names))]
    bitops = sum(ind.layer_macs[n] * w * a for n, w, a in zip(names, w_bits, a_bits))
    size = fixed_size_bits(ind) + sum(ind.layer_params[n] * w for n, w in zip(names, w_bits))
    if (bitops_budget is not None and bitops > bitops_budget) or (
            size_budget_bits is not None and size > size_budget_bits):  # never seen; a tolerance slip would land here
        raise InfeasibleBudgetError(f"the ILP solver ({solver}) returned a policy over budget: "
                                    f"{bitops} BitOps, {size} bits")
    return SearchResult(
        layer_names=list(names), weight_bits=w_bits, act_bits=a_bits,
        objective=sum(ind.act_indicators[n][a] + alpha * ind.weight_indicators[n][w]
                      for n, w, a in zip(names, w_bits, a_bits)),
        bitops=bitops, size_bits=size, compression_ratio=32 * ind.total_params() / size,
        bitops_budget=bitops_budget, size_budget_bits=size_budget_bits, status=status, solve_time=solve_time,
        fixed_layers={n: (f.w_bits, f.a_bits) for n, f in ind.fixed_layers.items()})
