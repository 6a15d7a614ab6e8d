"""The command line every experiment script shares: ``--threads`` and ``--out``, then a one-line report.

Each script adds its own options (steps, bit-widths, ...) to the parser this returns, so that
``python -m mpqlab.experiments.NAME --help`` lists exactly what that experiment can change.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def experiment_parser(doc: str, results: Path | None) -> argparse.ArgumentParser:
    """A parser described by the first line of the script's docstring, with ``--threads`` and ``--out``."""
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    # One thread by default: the experiments are usually run next to other work on a 2-core laptop, and
    # torch's default of one thread per core then oversubscribes the machine.
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, default=results,
                        help="result file" + (f" (default {results})" if results is not None else ""))
    return parser


def parse_experiment_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse, then apply ``--threads`` before any tensor work starts."""
    import torch

    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    return args


def report_written(out: Path, result: dict) -> None:
    print(f"wrote {out} in {result['seconds']:.0f} s")


def result_header(script: str, settings, **extra) -> dict:
    """The fields every seeded precompute writes first: how to rerun it, its seeds and settings, and where it ran.

    ``script`` is the module under ``mpqlab.experiments`` (``"binary"``); ``settings`` a dataclass with ``seeds``;
    ``extra`` adds fields of the script's own (e.g. the layers it studied).
    """
    from dataclasses import asdict

    import torch

    return {"script": f"python -m mpqlab.experiments.{script}", "seeds": list(settings.seeds),
            "settings": asdict(settings), "torch": torch.__version__, "threads": torch.get_num_threads(), **extra}


def resumable_result(settings, out: Path | None) -> dict | None:
    """The partial result in ``out`` if it was made with exactly these ``settings`` (a dataclass), else None.

    Scripts that write each finished point as it finishes call this first, keep the points already in the
    file, and run only the rest: a stopped precompute continues where it stopped. Other settings, or a file
    that is not JSON, mean starting afresh (said on stdout, never silently mixed).
    """
    import json
    from dataclasses import asdict

    if out is None or not Path(out).exists():
        return None
    try:
        saved = json.loads(Path(out).read_text())
    except (OSError, json.JSONDecodeError) as err:
        print(f"{out} is not readable JSON ({err}): starting afresh", flush=True)
        return None
    wanted = json.loads(json.dumps(asdict(settings)))  # tuples become lists, as in the file
    if saved.get("settings") != wanted:
        print(f"{out} was made with other settings ({saved.get('settings')}): starting afresh", flush=True)
        return None
    return saved


class ResumableResult:
    """A precompute's result file, rewritten after every finished point, that continues where it stopped.

    ``result`` is the dict written to ``out``: ``header`` (script, seeds, settings, ...), ``complete`` and,
    for each name in ``lists``, the points of that kind already in the file from a run with the same
    ``settings`` (``resumable_result``), else an empty list. ``save()`` after each point records the wall
    ``seconds`` and the ``cpu_seconds`` (this process's CPU time: what the run costs on an idle core, even
    when the machine is shared), both added up over resumed sessions; ``finish()`` marks it complete and
    stamps a UTC ``timestamp``. With ``out=None`` nothing is written.
    """

    def __init__(self, settings, out: Path | None, header: dict, lists: tuple[str, ...] = ("runs",)):
        import time

        self.out = out
        self.saved = resumable_result(settings, out) or {}
        self._wall = time.perf_counter() - self.saved.get("seconds", 0.0)
        self._cpu = time.process_time() - self.saved.get("cpu_seconds", 0.0)
        self.result = dict(header, complete=False) | {name: list(self.saved.get(name, [])) for name in lists}

    def keep(self, name: str, compute):
        """``result[name]`` from the file when it holds one, else ``compute()``: e.g. the float accuracy, once."""
        value = self.saved.get(name)
        self.result[name] = compute() if value is None else value
        return self.result[name]

    def remaining(self, planned: list, done: set) -> list:
        """The planned points not ``done`` yet, in plan order (saying so when resuming)."""
        todo = [key for key in planned if key not in done]
        if self.saved:
            print(f"resuming {self.out}: {len(planned) - len(todo)} points kept, {len(todo)} to go", flush=True)
        return todo

    def save(self) -> None:
        import time

        from mpqlab.checkpoint import atomic_write_json

        self.result["seconds"] = time.perf_counter() - self._wall
        self.result["cpu_seconds"] = time.process_time() - self._cpu
        if self.out is not None:
            atomic_write_json(self.out, self.result)

    def finish(self) -> dict:
        from datetime import datetime, timezone

        self.result["complete"] = True
        self.result["timestamp"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.save()
        return self.result


def finish_result(result: dict, start: float, out: Path | None) -> dict:
    """Stamp a finished run with its wall ``seconds`` (since ``time.perf_counter()`` was ``start``) and
    a UTC ``timestamp``, and write it atomically to ``out`` (unless None). Returns ``result``."""
    import time
    from datetime import datetime, timezone

    from mpqlab.checkpoint import atomic_write_json

    result["seconds"] = time.perf_counter() - start
    result["timestamp"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if out is not None:
        atomic_write_json(out, result)
    return result
