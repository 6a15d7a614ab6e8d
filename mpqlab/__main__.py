"""mpqlab's command line: ``python -m mpqlab <command> ...`` (or ``mpqlab <command>`` once installed).

Commands
  search   LIMPQ's bit-width search on an indicator file; prints the policy as JSON, e.g.
           python -m mpqlab search --indicators ind.json --bits 6 5 4 3 2 --wb 3 --ab 4 --cr 12.2
  indicators  LIMPQ joint training on any model and image folder; writes an indicator file
  finetune    fine-tune a searched policy; both also run as `torchrun --nproc-per-node N -m mpqlab ...`
  export      pack a fine-tuned LSQ model's weights at their own bit-widths into one safetensors file, e.g.
              python -m mpqlab export --model mobilenet_v1_small --checkpoint model.pt --out model.safetensors

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


def _add_training_options(p) -> None:
    """Arguments ``indicators`` and ``finetune`` share: model, data, schedule, processes, resuming."""
    p.add_argument("--model", required=True, metavar="SPEC",
                   help="torchvision:NAME, mpqlab:NAME or package.module:factory (random weights unless --weights)")
    p.add_argument("--weights", metavar="FILE.pt", help="state dict to start from (loaded with weights_only=True)")
    p.add_argument("--data", metavar="DIR", help="image folder DIR/train/<class>/*, DIR/val/<class>/* "
                                                 "(default: the bundled Fashion-MNIST)")
    p.add_argument("--image-size", type=int, metavar="PX", help="image side for --data (default 224)")
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the training set (default 1)")
    p.add_argument("--max-steps", type=int, metavar="N", help="stop after N steps if the epochs last longer")
    p.add_argument("--batch-size", type=int, default=64, help="images per process per step (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="data-loading processes per process (default 0)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: this process's GPU if any, else the CPU")
    p.add_argument("--amp", action="store_true", help="forward passes under torch.autocast (bfloat16; for GPUs)")
    p.add_argument("--out", required=True, metavar="FILE", help="output file (written by rank 0, atomically)")
    p.add_argument("--resume", action="store_true", help="continue from OUT.resume.pt after a crash or pre-emption")
    p.add_argument("--checkpoint-every", type=int, default=100, metavar="N",
                   help="write OUT.resume.pt every N steps (default 100)")
    p.add_argument("--min-step-fraction", type=float, default=0.01, metavar="F",
                   help="keep every LSQ step size >= F times its initial value (default 0.01)")
    p.add_argument("--stop-after-steps", type=int, metavar="N", help=argparse.SUPPRESS)  # tests: a killed job


def _add_indicators(commands) -> None:
    p = commands.add_parser("indicators", help="LIMPQ joint training: importance indicators for every layer",
                            description="Train one LSQ step size per layer and bit-width jointly (LIMPQ Sec. 3.4) "
                                        "and write them as an indicator file for `search`. Runs under torchrun.")
    _add_training_options(p)
    p.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 5, 6], metavar="B",
                   help="candidate bit-widths (default 2 3 4 5 6)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam, weights and BatchNorm (default 1e-4)")
    p.add_argument("--step-lr", type=float, default=1e-3, help="Adam, LSQ step sizes (default 1e-3)")
    p.add_argument("--bn-per-bits", action="store_true", help="one BatchNorm per weight bit-width")
    p.set_defaults(run=_run_indicators)


def _run_indicators(args) -> int:
    from mpqlab.pipeline import check_training_args, indicators

    check_training_args(args)
    return indicators(args)


def _add_finetune(commands) -> None:
    p = commands.add_parser("finetune", help="fine-tune a searched mixed-precision policy (LSQ)",
                            description="Quantize --model at the policy `search` printed and fine-tune it "
                                        "(as mpqlab.qat.fine_tune); write its state dict. Runs under torchrun.")
    _add_training_options(p)
    p.add_argument("--policy", required=True, metavar="FILE.json", help="the JSON `python -m mpqlab search` printed")
    p.add_argument("--lr", type=float, default=0.01, help="SGD, weights (default 0.01)")
    p.add_argument("--quant-lr", type=float, default=0.001, help="SGD, LSQ step sizes (default 0.001)")
    p.set_defaults(run=_run_finetune)


def _run_finetune(args) -> int:
    from mpqlab.pipeline import check_training_args, finetune

    check_training_args(args)
    return finetune(args)


def _add_export(commands) -> None:
    p = commands.add_parser("export", help="pack a fine-tuned LSQ model into bytes (safetensors)",
                            description="Fold BatchNorm, bit-pack each layer's weight codes at its own bit-width "
                                        "and write them with the step sizes and the policy to one safetensors "
                                        "file (mpqlab.deploy); print its size against the cost model's.")
    p.add_argument("--model", required=True, metavar="SPEC",
                   help="architecture: mobilenet_v1_small or mpqlab:mobilenet_v1_small (MobileNetV1 only, for now)")
    p.add_argument("--checkpoint", required=True, metavar="FILE.pt",
                   help="LSQ state dict (loaded with weights_only=True; its policy is read from the step keys)")
    p.add_argument("--out", required=True, metavar="FILE.safetensors", help="output file (written atomically)")
    p.set_defaults(run=_run_export)


def _run_export(args) -> int:
    from pathlib import Path

    from mpqlab.checkpoint import load_checkpoint
    from mpqlab.deploy import export_model, load_packed, lsq_model_from_state, packed_size_report

    checkpoint = Path(args.checkpoint)
    # a checkpoint written by mpqlab has its SHA-256 beside it; check it when it is there
    state = load_checkpoint(checkpoint, verify=checkpoint.with_suffix(".json").is_file())
    qmodel = lsq_model_from_state(args.model, state, source=str(checkpoint))
    export_model(qmodel, args.out, model_name=args.model)
    load_packed(args.out)  # read back: the file validates
    size = packed_size_report(qmodel, args.out)
    print(f"wrote {args.out}: {size['file_bytes']} bytes = cost model {size['cost_model_bytes']:.0f} "
          f"+ overhead {size['overhead_bytes']:.0f} (header {size['header_bytes']}, folded BN "
          f"{size['channel_bytes']}, padding {size['padding_bytes']:.0f}); float32 weights {size['float32_bytes']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mpqlab", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_search(commands)
    _add_indicators(commands)
    _add_finetune(commands)
    _add_export(commands)
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
