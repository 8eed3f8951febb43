"""``msma fit``: 3DMM fitting of photos, i.e. ``msma reconstruct --fit`` (default start: the mean face).

Every option of ``msma reconstruct`` applies (``--ckpt`` sets the network whose prediction starts the fit;
``mean``, the default, starts from the mean face posed by PnP on the landmarks).
"""

from __future__ import annotations

import sys


def cli_main(argv: list[str]) -> int:
    """Runs ``msma reconstruct --fit`` with ``argv``; returns its exit code."""
    from msma.cli.reconstruct import cli_main as reconstruct_main

    args = list(argv)
    if any(a in ("-h", "--help") for a in args):
        print("msma fit: msma reconstruct --fit (3DMM fitting to MediaPipe's dense landmarks and the photo)\n")
    return reconstruct_main(["--fit", *args] if "--fit" not in args else args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli_main(sys.argv[1:]))
