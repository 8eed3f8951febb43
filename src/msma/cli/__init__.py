"""The ``msma`` console script: ``msma {train,eval,reconstruct,prepare,assets} ...``.

``msma train --config-name <experiment> [hydra overrides]`` is the one training entry point (also
``python -m msma.cli train ...``); the other sub-commands take ordinary ``--options`` (``msma <cmd> --help``).
Each command is a thin ``cli_main(argv) -> int`` over library functions: ``msma.cli.train`` (Hydra ->
:func:`msma.training.run.run_training`), ``msma.cli.eval`` (-> :mod:`msma.evaluation`), ``msma.cli.reconstruct``
(-> :class:`msma.inference.Reconstructor`), ``msma.cli.prepare`` (-> :mod:`msma.data.prepare`),
``msma.cli.assets``, ``msma.cli.info``, ``msma.cli.convert``.
"""

from __future__ import annotations

import importlib
import sys

#: sub-command -> "module:function" taking ``argv`` (list of str) and returning an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("msma.cli.train:cli_main", "train an experiment (Hydra: --config-name <experiment> key=value ...)"),
    "eval": ("msma.cli.eval:cli_main", "evaluate a checkpoint on a benchmark (AFLW2000-3D, synthetic, MICC, NoW)"),
    "reconstruct": (
        "msma.cli.reconstruct:cli_main",
        "reconstruct faces from photos: OBJ + coefficients JSON + overlay PNG",
    ),
    "fit": ("msma.cli.fit:cli_main", "3DMM fitting of photos to MediaPipe's dense landmarks (reconstruct --fit)"),
    "prepare": ("msma.cli.prepare:cli_main", "fill a dataset's landmark pseudo-label cache"),
    "assets": ("msma.cli.assets:cli_main", "convert / locate face-model assets (ict, bfm)"),
    "info": ("msma.cli.info:cli_main", "an experiment's parameters, FLOPs, layout, data and missing inputs"),
    "convert": ("msma.cli.convert:cli_main", "the authors' MSMA/MLANet/Deep3D checkpoint -> an msma checkpoint"),
}


def _usage() -> str:
    lines = ["usage: msma <command> [options]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'msma <command> --help' for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatches to a sub-command; returns its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if args[0] in ("-V", "--version"):
        from msma import __version__

        print(f"msma {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"msma: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name = COMMANDS[name][0].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
