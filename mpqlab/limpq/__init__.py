"""LIMPQ: mixed precision from learned layer-wise importance (Tang et al., ECCV 2022).

- ``indicators``: the importance-indicator file (load, validate, save).
- ``search``: the bit-width search, an integer linear program solved exactly.

Command line: ``python -m mpqlab search --indicators FILE.json --bits 6 5 4 3 2 --wb 3 --ab 4``.
"""

from mpqlab.limpq.indicators import (
    FixedLayer,
    Indicators,
    load_indicators,
    save_indicators,
    synthetic_indicators,
)
from mpqlab.limpq.search import (
    SearchResult,
    allowed_bits,
    min_bitops,
    min_size_bits,
    size_budget,
    solve_policy,
    uniform_budget,
)

__all__ = [
    "FixedLayer", "Indicators", "load_indicators", "save_indicators", "synthetic_indicators",
    "SearchResult", "allowed_bits", "min_bitops", "min_size_bits", "size_budget", "solve_policy", "uniform_budget",
]
