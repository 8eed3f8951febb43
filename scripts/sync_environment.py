"""Writes environment.yml (conda-forge only) from constraints.txt so both carry the same pins.

Usage: python scripts/sync_environment.py [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = """# Conda environment for msma (conda-forge only). Generated from constraints.txt by
# scripts/sync_environment.py (`make env-file`); tests/unit/test_environment.py checks they agree.
#   conda env create -f environment.yml && conda activate msma
name: msma
channels:
  - conda-forge
  - nodefaults
dependencies:
  - python=3.11
  - pip
  - pip:
      - -e .[dev,cuda,dlib,analysis]
"""


def read_pins(path: Path) -> list[str]:
    pins = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            pins.append(line)
    return pins


def render(pins: list[str]) -> str:
    return HEADER + "".join(f"      - {p}\n" for p in pins)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if environment.yml is out of date")
    args = parser.parse_args()
    text = render(read_pins(ROOT / "constraints.txt"))
    target = ROOT / "environment.yml"
    if args.check:
        if not target.exists() or target.read_text() != text:
            print("environment.yml is out of date: run `make env-file`", file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
