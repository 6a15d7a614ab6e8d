"""mpqlab's command line: ``python -m mpqlab <command> ...`` (or ``mpqlab <command>`` once installed).

Commands
  search   LIMPQ's bit-width search on an indicator file; prints the policy as JSON, e.g.
           python -m mpqlab search --indicators ind.json --bits 6 5 4 3 2 --wb 3 --ab 4 --cr 12.2

Each command is a ``_add_<command>`` (its arguments) and a ``_run_<command>`` (the work, returning
the exit code). Errors mpqlab raises on purpose become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from mpqlab.errors import BitWidthError, MpqlabError


def _add_search(commands) -> None:
    p = commands.add_parser("search", help="LIMPQ bit-width search (Tang et al., ECCV 2022)",
                            description="Pick (w_bits, a_bits) per layer minimising sum s_a + alpha * s_w "
                                        "under a BitOps and/or model-size budget; print the policy as JSON.")
    p.add_argument("--indicators", required=True, metavar="FILE.json", help="importance-indicator file")
    p.add_argument("--bits", required=True, type=int, nargs="+", metavar="B", help="bit options, e.g. 6 5 4 3 2")
    p.add_argument("--wb", type=int, metavar="W", help="BitOps budget: that of the uniform policy W<wb>A<ab> ...")
    p.add_argument("--ab", type=int, metavar="A", help="... over the searchable layers (give --wb and --ab together)")
    p.add_argument("--cr", type=float, metavar="R", help="model-size budget: compression ratio >= R vs 32-bit")
    p.add_argument("--alpha", type=float, default=2.0, help="weight of the weight indicators (default 2)")
    p.set_defaults(run=_run_search)


def _run_search(args) -> int:
    from mpqlab.limpq.indicators import load_indicators
    from mpqlab.limpq.search import size_budget, solve_policy, uniform_budget

    if (args.wb is None) != (args.ab is None):
        raise BitWidthError("give --wb and --ab together: the BitOps budget is that of the uniform policy W<wb>A<ab>")
    indicators = load_indicators(args.indicators)
    bitops_budget = None if args.wb is None else uniform_budget(indicators, args.wb, args.ab)
    size_budget_bits = None if args.cr is None else size_budget(indicators, args.cr)
    result = solve_policy(indicators, args.bits, bitops_budget, size_budget_bits, alpha=args.alpha)
    # One key per line, lists kept on one line: still valid JSON, and readable in a terminal.
    lines = [f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in result.to_dict().items()]
    print("{\n" + ",\n".join(lines) + "\n}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mpqlab", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_search(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code (argparse itself exits with 2 on bad usage)."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except MpqlabError as err:
        message = " ".join(str(err).split())  # one line, whatever the message
        print(f"mpqlab {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
