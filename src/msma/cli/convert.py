"""``msma convert --network NET SOURCE OUTPUT [overrides]``: a thin command over
:func:`msma.models.convert.convert_checkpoint_file`."""

from __future__ import annotations

import argparse
import sys

from msma.models.convert import AUTHORS_NETWORKS, convert_checkpoint_file


def cli_main(argv: list[str] | None = None) -> int:
    """``msma convert --network NET SOURCE OUTPUT [overrides]``: the authors' checkpoint -> an msma checkpoint.

    Returns 0, or 2 with a one-line reason naming the file when it is missing, unreadable or not the authors'
    ``network`` (no output is written then)."""
    ap = argparse.ArgumentParser(prog="msma convert", description=cli_main.__doc__)
    ap.add_argument("--network", required=True, choices=AUTHORS_NETWORKS)
    ap.add_argument("source", help="their checkpoint, e.g. checkpoints/<name>/epoch_40.pth")
    ap.add_argument("output", help="msma checkpoint to write (.ckpt)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the stored experiment configuration")
    args = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        convert_checkpoint_file(args.source, args.output, args.network, args.overrides)
    except (FileNotFoundError, ValueError) as exc:
        print(f"msma convert: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}; evaluate with: msma eval --ckpt {args.output} ...")
    return 0
