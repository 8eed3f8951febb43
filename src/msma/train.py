"""``python -m msma.train ...`` (torchrun / SLURM launch lines): the same as ``msma train ...``.

The implementation is :mod:`msma.cli.train`; the training run itself is :func:`msma.training.run.run_training`.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    if sys.path and sys.path[0] and __file__.startswith(sys.path[0]):
        sys.path.pop(0)  # run as a script: do not let the package folder shadow top-level modules
    from msma.cli.train import cli_main

    sys.exit(cli_main(sys.argv[1:]))
