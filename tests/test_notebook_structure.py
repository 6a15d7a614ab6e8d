"""Every notebook follows the course rhythm, and its stored outputs are clean enough to publish.

Checked on the stored .ipynb files (nothing is executed): every code cell has been run; the opening cell
states learning goals and prerequisites; an exercises section calls at least two self-checks from
``mpqlab.exercises``; the notebook ends with further reading; no stored output is an error, shows a
machine-specific path or prints the self-checks' internal FAILED sentinel; notebook 00 links every other
notebook, and every link it has points to a file that exists; the README links every notebook and its
thumbnails exist and stay small.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))

LIST_ITEM = re.compile(r"^\s*(\d+\.|[-*])\s+\S", re.M)
CHECK_CALL = re.compile(r"\b(check_\w+)\(")
NOTEBOOK_LINK = re.compile(r"\]\(([^)\s]+\.ipynb)\)")
# A stored output must not reveal where it was run: temp files, home directories, this checkout.
MACHINE_PATH = re.compile(r"/tmp/|/home/[^/\s]+|/root/|/Users/[^/\s]+|[A-Z]:\\Users\\" + "|" + re.escape(str(REPO)))


def read(path: Path):
    return nbformat.read(path, as_version=4)


def markdown_cells(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "markdown"]


def heading_index(nb, title: str) -> int | None:
    """Index of the first markdown cell with a heading line starting with ``title`` (any level)."""
    pattern = re.compile(rf"^#+\s*{re.escape(title)}", re.M | re.I)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and pattern.search(cell.source):
            return i
    return None


def output_texts(output) -> list[str]:
    texts = [output.get("text", "")] + list(output.get("traceback", []))
    for mime, value in output.get("data", {}).items():
        if mime.startswith("text/"):
            texts.append(value if isinstance(value, str) else "".join(value))
    return texts


def test_the_notebooks_are_there():
    assert len(NOTEBOOKS) >= 10, f"expected notebooks 00-10 in {NOTEBOOK_DIR}, found {[p.name for p in NOTEBOOKS]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_title_carries_the_reading_order(path):
    first = markdown_cells(read(path))[0]
    number = path.name[:2]
    assert re.match(rf"#\s+{number}\b", first), (
        f"{path.name}: the opening cell should start with the title '# {number} · ...', starts with {first[:40]!r}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_opens_with_learning_goals_and_prerequisites(path):
    first = markdown_cells(read(path))[0]
    for label in ("Prerequisites", "Learning goals"):
        assert label in first, f"{path.name}: the opening markdown cell has no '{label}'"
    goals = first.split("Learning goals", 1)[1].split("\n\n**", 1)[0]
    n_items = len(LIST_ITEM.findall(goals))
    assert n_items >= 3, f"{path.name}: 'Learning goals' should list at least 3 goals, found {n_items}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_has_exercises_with_self_checks(path):
    nb = read(path)
    start = heading_index(nb, "Exercises")
    assert start is not None, f"{path.name}: no markdown heading '## Exercises'"
    code_after = "\n".join(c.source for c in nb.cells[start:] if c.cell_type == "code")
    assert re.search(r"from mpqlab\.exercises(\.\w+)? import", code_after), (
        f"{path.name}: the exercises do not import their self-checks from mpqlab.exercises")
    checks = set(CHECK_CALL.findall(code_after))
    assert len(checks) >= 2, f"{path.name}: the exercises call {len(checks)} self-check(s) {sorted(checks)}, need 2"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_ends_with_further_reading(path):
    nb = read(path)
    last_markdown = markdown_cells(nb)[-2:]
    reading = [s for s in last_markdown if re.search(r"^#+\s*Further reading", s, re.M)]
    assert reading, f"{path.name}: none of the last two markdown cells is a '## Further reading' section"
    n_refs = len(LIST_ITEM.findall(reading[-1].split("Further reading", 1)[1]))
    assert n_refs >= 1, f"{path.name}: 'Further reading' lists no references"
    assert heading_index(nb, "Further reading") > (heading_index(nb, "Exercises") or -1), (
        f"{path.name}: 'Further reading' should come after the exercises")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_is_stored_executed(path):
    """The workbook ships executed (the static site and the README's figures use the stored outputs)."""
    cells = [c for c in read(path).cells if c.cell_type == "code" and c.source.strip()]
    not_run = [i for i, c in enumerate(cells) if c.get("execution_count") is None]
    assert not not_run, (f"{path.name}: {len(not_run)} of {len(cells)} code cells have never been executed "
                         f"(code cells {not_run[:5]}...); re-execute it: jupyter nbconvert --to notebook --execute --inplace NOTEBOOK")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_outputs_are_clean(path):
    """No error output or traceback, no machine-specific path, no leaked self-check sentinel."""
    problems = []
    for i, cell in enumerate(read(path).cells):
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                problems.append(f"cell {i}: stored error {output.ename}: {output.evalue}")
            for text in output_texts(output):
                if "Traceback (most recent call last)" in text:
                    problems.append(f"cell {i}: a traceback in the output")
                if "<object object at 0x" in text:  # mpqlab.exercises.FAILED compared instead of skipped
                    problems.append(f"cell {i}: a self-check printed the FAILED sentinel; skip results that `is FAILED`")
                match = MACHINE_PATH.search(text)
                if match:
                    context = text[max(0, match.start() - 40): match.end() + 40].replace("\n", " ")
                    problems.append(f"cell {i}: machine-specific path {match.group(0)!r} in {context!r}")
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


def test_tour_links_every_notebook_and_only_existing_ones():
    tour = next((p for p in NOTEBOOKS if p.name.startswith("00_")), None)
    assert tour is not None, "notebook 00 is missing"
    links = set()
    for source in markdown_cells(read(tour)):
        links.update(NOTEBOOK_LINK.findall(source))
    missing = [p.name for p in NOTEBOOKS if p != tour and p.name not in links]
    assert not missing, f"{tour.name} does not link {missing}; add them to its course table"
    dangling = sorted(link for link in links if not (NOTEBOOK_DIR / link).is_file())
    assert not dangling, f"{tour.name} links notebooks that do not exist: {dangling}"


def test_readme_lists_every_notebook_with_small_existing_thumbnails():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    missing = [p.name for p in NOTEBOOKS if f"(notebooks/{p.name})" not in readme]
    assert not missing, f"README.md's notebook table does not link {missing}"
    images = re.findall(r'<img src="([^"]+)"', readme)
    assert images, "README.md shows no thumbnails"
    for image in images:
        path = REPO / image
        assert path.is_file(), f"README.md shows {image}, which does not exist (run docs/make_thumbnails.py)"
        assert path.stat().st_size < 60_000, f"{image} is {path.stat().st_size} bytes; thumbnails stay under 60 kB"
