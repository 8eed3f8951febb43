"""Fails when a notebook is stored with outputs or execution counts (they are stored clean).

Usage: python scripts/check_notebooks.py [NOTEBOOK ...]   (default: notebooks/*.ipynb)
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]


def dirty_cells(path: Path) -> list[int]:
    """Indices of code cells that carry outputs or an execution count."""
    nb = nbformat.read(path, as_version=4)
    return [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]


def main(argv: list[str]) -> int:
    paths = [Path(p) for p in argv] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    bad = {p: cells for p in paths if (cells := dirty_cells(p))}
    for p, cells in bad.items():
        print(f"{p}: cells {cells} have outputs; clear them (Jupyter: Clear All Outputs) before committing")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
