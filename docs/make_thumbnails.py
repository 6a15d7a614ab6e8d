"""Copy one key figure out of each executed notebook into ``docs/thumbnails/NN_name.png`` for the README.

    .venv/bin/python docs/make_thumbnails.py

Nothing is executed: the figures are the PNG outputs stored in ``notebooks/*.ipynb``. Each notebook's
figure is named in ``KEY_FIGURES`` by a snippet of its cell's source (so adding or moving cells does not
change the choice); the first PNG output among the code cells containing the snippet is taken,
downsized to ``WIDTH`` pixels and reduced to a colour palette so that the file stays under ``MAX_BYTES``.
Run it again after re-executing a notebook.
"""

from __future__ import annotations

import base64
import io
import sys
from pathlib import Path

import nbformat
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
OUT_DIR = REPO / "docs" / "thumbnails"
WIDTH = 480          # pixels; the README shows them at half that width, sharp on high-density screens
COLORS = 64          # palette size: matplotlib line plots need few colours, and a palette PNG is small
MAX_BYTES = 60_000   # keeps the repository and the README light

# notebook stem -> a snippet of the source of the cell whose figure represents the notebook
KEY_FIGURES = {
    "00_tour": "macs_bar(small",                              # MACs per layer of both networks
    "01_uniform_quantization": "schemes.items()",             # asymmetric / symmetric grids at 3 bits
    "02_log_quantization": "linear_grid_levels(t, 4, signed)",  # linear vs log2 grid on real tensors
    "03_weighted_entropy": "grids.items()",                   # original, clipped linear, log2, weighted entropy
    "04_outlier_aware": "outliers (% of non-zero values)",    # accuracy against the outlier ratio
    "05_precision_highway": "residual branches",              # accumulated error, block by block
    "06_learnable_quantizers": "forward: a clipped staircase",  # the straight-through estimator
    "07_profit": "h-swish dips to -3/8",                      # h-swish and the signed / shifted 4-bit grids
    "08_binarization": "MobileNetV1-small, binarized",        # binary fine-tune curves
    "09_dw_pw_sensitivity": '("w_step", "weight step',        # degradation against learned step size
    "10_limpq_search": "pareto_plot(points",                  # accuracy vs BitOps per search criterion
    "11_policy_to_bytes": "columns = [\"fake-quant checkpoint",  # stored bytes vs the cost model, three policies
}


def key_figure(nb, snippet: str) -> bytes:
    """The first stored PNG output of the code cells whose source contains ``snippet``."""
    cells = [c for c in nb.cells if c.cell_type == "code" and snippet in c.source]
    if not cells:
        raise LookupError(f"no code cell contains {snippet!r}")
    for cell in cells:
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if png:
                return base64.b64decode(png)
    raise LookupError(f"the {len(cells)} cell(s) containing {snippet!r} have no stored PNG (is it executed?)")


def thumbnail(png: bytes, width: int = WIDTH, colors: int = COLORS) -> bytes:
    """Downsize to ``width`` pixels (never up), reduce to a ``colors``-colour palette, return PNG bytes."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    if image.width > width:
        height = round(image.height * width / image.width)
        image = image.resize((width, height), Image.LANCZOS)
    small = image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    buffer = io.BytesIO()
    small.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def main() -> int:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    problems = []
    for path in sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb")):
        snippet = KEY_FIGURES.get(path.stem)
        if snippet is None:
            print(f"{path.name}: no key figure chosen; add one to KEY_FIGURES")
            continue
        try:
            data = thumbnail(key_figure(nbformat.read(path, as_version=4), snippet))
        except LookupError as err:
            problems.append(f"{path.name}: {err}")
            continue
        if len(data) > MAX_BYTES:
            problems.append(f"{path.name}: thumbnail is {len(data)} bytes, above {MAX_BYTES}")
            continue
        out = OUT_DIR / f"{path.stem}.png"
        out.write_bytes(data)
        print(f"{out.relative_to(REPO)}: {len(data) / 1000:.1f} kB")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
