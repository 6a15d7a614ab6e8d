"""Finish the static course site after ``jupyter nbconvert --to html`` (``make html``).

    .venv/bin/python docs/make_site.py [SITE_DIR]

1. In every exported page, links to another notebook (``href="01_uniform_quantization.ipynb"``, as in
   notebook 00's course table) are pointed at its HTML page instead.
2. ``SITE_DIR/index.html`` lists every ``notebooks/NN_*.ipynb`` in reading order with its title (the first
   markdown heading) and, when there is one, its thumbnail from ``docs/thumbnails/`` (copied into
   ``SITE_DIR/thumbnails/``).
A notebook whose HTML page is missing from ``SITE_DIR`` is an error: the export did not finish.
"""

from __future__ import annotations

import html
import re
import shutil
import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
THUMBNAIL_DIR = REPO / "docs" / "thumbnails"

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>mpqlab: a quantization workbook</title>
<style>
  body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
  li {{ display: flex; gap: 1rem; align-items: center; margin: 0.8rem 0; }}
  ol {{ list-style: none; padding: 0; }}
  img {{ width: 240px; border: 1px solid #ddd; }}
  .placeholder {{ width: 240px; flex: none; }}
  a {{ font-size: 1.1rem; }}
</style>
</head>
<body>
<h1>mpqlab: a quantization workbook</h1>
<p>Neural-network quantization from 8-bit integer basics to learned mixed precision, in {count} notebooks
to read in order. These pages show the notebooks with their stored outputs; to run them and move the
sliders, get the repository and type <code>make lab</code>.</p>
<ol>
{items}
</ol>
</body>
</html>
"""


NOTEBOOK_HREF = re.compile(r'href="(\d\d_[\w-]+)\.ipynb(#[^"]*)?"')


def relink(page: Path) -> int:
    """Point links to sibling notebooks at their exported pages; return how many were changed."""
    text = page.read_text(encoding="utf-8")
    new, count = NOTEBOOK_HREF.subn(lambda m: f'href="{m.group(1)}.html{m.group(2) or ""}"', text)
    if count:
        page.write_text(new, encoding="utf-8")
    return count


def title_of(path: Path) -> str:
    """The notebook's first markdown heading, without the leading '#'."""
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return path.stem


def item(path: Path, site: Path) -> str:
    page = f"{path.stem}.html"
    if not (site / page).is_file():
        raise FileNotFoundError(f"{site / page} is missing: export the notebooks first (make html)")
    thumb = THUMBNAIL_DIR / f"{path.stem}.png"
    if thumb.is_file():
        shutil.copy(thumb, site / "thumbnails" / thumb.name)
        picture = f'<a href="{page}"><img src="thumbnails/{thumb.name}" alt=""></a>'
    else:
        picture = '<span class="placeholder"></span>'
    return f'<li>{picture}<a href="{page}">{html.escape(title_of(path))}</a></li>'


def main(site: Path) -> None:
    (site / "thumbnails").mkdir(parents=True, exist_ok=True)
    notebooks = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    items = "\n".join(item(path, site) for path in notebooks)
    relinked = sum(relink(site / f"{path.stem}.html") for path in notebooks)
    (site / "index.html").write_text(PAGE.format(count=len(notebooks), items=items), encoding="utf-8")
    print(f"wrote {site / 'index.html'} listing {len(notebooks)} notebooks; pointed {relinked} links at .html pages")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "site")
