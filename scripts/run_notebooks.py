"""Executes the notebooks headless (nbclient) and writes the executed copies to runs/notebooks/.

Usage: python scripts/run_notebooks.py [--tiny] [--out DIR] [NOTEBOOK ...]

Parameters are passed to the notebooks through environment variables (``MSMA_NB_*``), read by each notebook's
first cell, so the stored notebooks stay clean and runnable in Jupyter as they are. ``--tiny`` selects the small
settings the tests use.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def execute(path: Path, out_dir: Path, env: dict[str, str], timeout: int = 1800) -> Path:
    """Runs one notebook with ``env`` added to the kernel's environment; returns the executed copy's path."""
    nb = nbformat.read(path, as_version=4)
    out_dir.mkdir(parents=True, exist_ok=True)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    target = out_dir / path.name
    nbformat.write(nb, target)
    return target


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--tiny", action="store_true", help="tiny settings (what the tests use)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "notebooks")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    env = {"MSMA_NB_OUT": str(args.out), "MPLBACKEND": "Agg"}
    if args.tiny:
        env["MSMA_NB_TINY"] = "1"
    for p in paths:
        t0 = time.perf_counter()
        target = execute(p, args.out, env)
        print(f"executed {p} -> {target} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
