"""How long does each notebook take from top to bottom? Every cell run headless, as a student would.

    python benchmarks/notebook_runtime.py [notebooks/NAME.ipynb ...]      (or: make runtime)

Runs every `notebooks/*.ipynb` (or only those named) with nbclient in a temporary copy of `notebooks/`,
so the repository's files are never written. Prints a table of wall seconds per notebook (kernel
start included) and the kernel's CPU seconds, and the total. A notebook over 180 s is marked SLOW,
a total over 20 minutes is flagged: the workbook promises each notebook runs in a few minutes on a
CPU laptop. Exits with status 1 if any notebook raised an error (it goes on with the others first).

Wall time on a shared machine grows with the load of other jobs (printed above the table); CPU
seconds do not, so compare those between runs.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

REPO = Path(__file__).resolve().parents[1]
SLOW_S = 180  # one notebook
TOTAL_S = 20 * 60  # the whole workbook
CELL_TIMEOUT_S = 900  # a single cell; beyond this the notebook counts as failed
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # colour codes in IPython tracebacks


def children_cpu_seconds() -> float:
    """User + system CPU time of finished child processes (the kernels, once shut down)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cell_seconds(nb) -> list[tuple[float, int, str]]:
    """(seconds, cell index, first source line) of each executed code cell, slowest first.

    nbclient stamps every cell with when its execution started and when the kernel replied.
    """
    from datetime import datetime

    timings = []
    for index, cell in enumerate(nb.cells):
        stamps = cell.get("metadata", {}).get("execution", {})
        start, end = stamps.get("iopub.execute_input"), stamps.get("shell.execute_reply")
        if cell.cell_type == "code" and start and end:
            seconds = (datetime.fromisoformat(end.replace("Z", "+00:00"))
                       - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()
            first_line = next((line for line in cell.source.splitlines() if line.strip()), "")
            timings.append((seconds, index, first_line[:60]))
    return sorted(timings, reverse=True)


def run_notebook(path: Path, slowest: int = 0) -> str | None:
    """Execute all cells of `path` in its own folder; None if fine, else a one-paragraph error.

    With ``slowest`` > 0, also print that many of the slowest cells (to see where the time goes)."""
    nb = nbformat.read(path, as_version=4)
    kernel = nb.metadata.get("kernelspec", {}).get("name", "python3")
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=kernel,
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except CellExecutionError as err:
        # The message holds the cell source and the traceback; its last lines name the error.
        return "\n".join(ANSI.sub("", str(err)).strip().splitlines()[-12:])
    except (CellTimeoutError, DeadKernelError) as err:
        return f"{type(err).__name__}: {err}"
    finally:
        for seconds, index, first_line in cell_seconds(nb)[:slowest]:
            print(f"\n      cell {index:3d}: {seconds:6.1f} s  {first_line}", end="")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/*.ipynb")
    parser.add_argument("--slowest", type=int, default=0, metavar="N",
                        help="also print the N slowest cells of each notebook")
    args = parser.parse_args(argv)
    names = [p.name for p in args.notebooks] or sorted(p.name for p in (REPO / "notebooks").glob("*.ipynb"))
    if not names:
        print("no notebooks found in notebooks/")
        return 1

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"running {len(names)} notebooks on {os.cpu_count()} cores (load average {load})")
    rows, errors = [], {}
    with tempfile.TemporaryDirectory(prefix="mpqlab-runtime-") as tmp:
        copy = Path(tmp) / "notebooks"
        shutil.copytree(REPO / "notebooks", copy, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        for name in names:
            if not (copy / name).exists():
                print(f"{name}: not in notebooks/")
                return 1
            print(f"  {name} ...", end="", flush=True)
            cpu, start = children_cpu_seconds(), time.perf_counter()
            error = run_notebook(copy / name, args.slowest)
            wall, cpu = time.perf_counter() - start, children_cpu_seconds() - cpu
            status = "ERROR" if error else ("SLOW" if wall > SLOW_S else "ok")
            print(f" {wall:.0f} s {status}")
            rows.append((name, wall, cpu, status))
            if error:
                errors[name] = error

    total_wall = sum(r[1] for r in rows)
    width = max(len(r[0]) for r in rows + [("total", 0, 0, "")])
    print(f"\n{'notebook'.ljust(width)}  {'wall s':>7}  {'cpu s':>7}  status")
    for name, wall, cpu, status in rows:
        print(f"{name.ljust(width)}  {wall:7.1f}  {cpu:7.1f}  {status}")
    total_status = f"OVER {TOTAL_S // 60} min" if total_wall > TOTAL_S else "ok"
    print(f"{'total'.ljust(width)}  {total_wall:7.1f}  {sum(r[2] for r in rows):7.1f}  {total_status}")
    slow = [r[0] for r in rows if r[1] > SLOW_S]
    if slow:
        print(f"\nover {SLOW_S} s: {', '.join(slow)}")
    for name, error in errors.items():
        print(f"\n{name} failed:\n{error}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
