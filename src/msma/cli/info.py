"""``msma info --config-name <experiment> [--json] [--no-flops] [overrides]``: a thin command over
:func:`msma.info.experiment_info`."""

from __future__ import annotations

import argparse
import json
import sys

from msma.info import experiment_info, info_text

INFO_DESCRIPTION = "An experiment's parameters, FLOPs, coefficient layout, data and the inputs this machine lacks."


def cli_main(argv: list[str] | None = None) -> int:
    """``msma info`` entry point: 0, or 2 with a one-line reason for an unknown experiment or a bad override."""
    ap = argparse.ArgumentParser(prog="msma info", description=INFO_DESCRIPTION)
    ap.add_argument("--config-name", "-c", required=True, help="experiment (experiments/<name>.yaml)")
    ap.add_argument("--json", action="store_true", help="print one JSON object (key 'params': total, int)")
    ap.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. face_model=ict data.image_size=128")
    args = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    from msma.config import compose_for_cli

    try:
        cfg = compose_for_cli(args.config_name, list(args.overrides))
    except ValueError as exc:
        print(f"msma info: {exc}", file=sys.stderr)
        return 2
    info = experiment_info(cfg, flops=not args.no_flops)
    print(json.dumps(info) if args.json else info_text(info))
    return 0
