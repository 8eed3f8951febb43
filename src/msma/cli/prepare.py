"""``msma prepare``: fill the label cache of a folder of photos, or of every source of an experiment.

``msma prepare --data DIR --landmarks dlib|fan|mediapipe|gt [--fit] [--detector NAME] [--all-faces] [--cache DIR]
[--weights FILE] [--workers N] [--json FILE]`` labels every photo under ``DIR``
(:func:`msma.data.prepare.prepare_folder`); ``msma prepare --config-name EXPERIMENT [overrides]`` every source of
that experiment's data configuration (:func:`msma.data.prepare.prepare_sources`). Prints the summary; exit code 2
on a usage error (missing folder, missing model).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from msma.data.landmarks import LandmarkBackendUnavailable
from msma.data.prepare import prepare_folder, prepare_sources
from msma.utils.files import atomic_write_text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msma prepare", description="fill a dataset's landmark pseudo-label cache")
    parser.add_argument("--data", default=None, help="folder of photos (searched recursively)")
    parser.add_argument(
        "--config-name",
        default=None,
        help="an experiment: prepare every source of its data configuration (data.sources, or data.kind/root)",
    )
    parser.add_argument(
        "overrides", nargs="*", help="with --config-name: Hydra overrides (key=value), as for msma train"
    )
    parser.add_argument(
        "--landmarks", default="dlib", choices=["dlib", "fan", "mediapipe", "gt"], help="landmark backend"
    )
    parser.add_argument(
        "--fit", action="store_true", help="with --landmarks mediapipe: also cache fitted 3DMM coefficients"
    )
    parser.add_argument(
        "--detector",
        default=None,
        help="face detector: dlib, opencv, dlib+opencv or mediapipe (default: mediapipe "
        "for --landmarks mediapipe, else dlib)",
    )
    parser.add_argument("--weights", default=None, help="landmark model file (dlib .dat / FAN .pth.tar)")
    parser.add_argument("--cache", default=None, help="cache directory (default: $MSMA_HOME/labels/<folder>-<hash>)")
    parser.add_argument(
        "--all-faces", action="store_true", help="count every face as a sample, not only the largest per image"
    )
    parser.add_argument("--device", default="cpu", help="torch device for the fan backend")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="labelling workers, each with its own model: threads for mediapipe (default: one per usable CPU, "
        "at most 4), processes for the other backends (default 1)",
    )
    parser.add_argument("--json", default=None, help="also write the summary as JSON to this file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every skipped file")
    return parser


def cli_main(argv: list[str]) -> int:
    """``msma prepare``; returns 0 on success, 1 when the folder holds no photos, 2 on a usage error (missing folder,
    missing model)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if (args.data is None) == (args.config_name is None):
        print("msma prepare: give --data DIR or --config-name EXPERIMENT", file=sys.stderr)
        return 2
    if args.config_name is not None:
        return _prepare_experiment(args)
    if args.overrides:
        print(f"msma prepare: overrides {args.overrides} need --config-name", file=sys.stderr)
        return 2
    if args.fit and args.landmarks != "mediapipe":
        print("msma prepare: --fit needs --landmarks mediapipe", file=sys.stderr)
        return 2
    try:
        run = prepare_folder(
            args.data,
            landmarks="mediapipe+fit" if args.fit else args.landmarks,
            detector=args.detector,
            cache_dir=args.cache,
            weights=args.weights,
            device=args.device,
            faces="all" if args.all_faces else "largest",
            progress=not args.no_progress,
            workers=args.workers,
        )
    except (FileNotFoundError, LandmarkBackendUnavailable, ValueError) as exc:  # AssetError -> Unavailable
        print(f"msma prepare: {exc}", file=sys.stderr)
        return 2
    print(run.summary())
    if args.json:
        atomic_write_text(args.json, json.dumps(run.as_dict(), indent=2))
    if run.images == 0:  # most likely a wrong folder: say so, as msma reconstruct does for an empty folder
        print(f"msma prepare: {args.data}: no photos in this folder or below it", file=sys.stderr)
        return 1
    return 0


def _prepare_experiment(args: argparse.Namespace) -> int:
    """``msma prepare --config-name EXP [overrides]``: every source of the experiment's data configuration."""
    from msma.config import compose_for_cli, to_typed

    try:
        data = to_typed(compose_for_cli(args.config_name, list(args.overrides))).data
        reports = prepare_sources(
            data.source_list(),
            data.source_names(),
            default_landmarks=data.landmarks,
            detector=args.detector or data.detector,
            cache_dir=args.cache or data.cache_dir,
            weights=args.weights or data.landmark_weights,
            faces="all" if data.faces == "all" else "largest",
            num_samples=data.num_samples,
            progress=not args.no_progress,
            workers=args.workers,
            w300lp_landmarks=data.w300lp_landmarks,
        )
    except (FileNotFoundError, LandmarkBackendUnavailable, ValueError) as exc:
        print(f"msma prepare: {exc}", file=sys.stderr)
        return 2
    for report in reports:
        print(report.summary())
    if args.json:
        atomic_write_text(args.json, json.dumps([r.__dict__ for r in reports], indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli_main(sys.argv[1:]))
