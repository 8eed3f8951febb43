"""``python -m msma.cli <command> ...``."""

import sys

from msma.cli import main

if __name__ == "__main__":
    sys.exit(main())
