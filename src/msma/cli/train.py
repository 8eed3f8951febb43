"""``msma train --config-name <experiment> [key=value ...]``: the Hydra application over
:func:`msma.training.run.run_training`.

:func:`cli_main` hands its arguments to a ``@hydra.main`` function (config root ``experiments/``), so the whole
Hydra command line works: overrides, ``--cfg job``, ``--info``, ``-m`` multiruns. The run folder is
``runs/<name>/<timestamp>`` (``hydra.run.dir``; set ``MSMA_RUN_ID`` to pin the timestamp part, e.g. to
``$SLURM_JOB_ID`` so that all ranks of a torchrun/SLURM job share one folder).
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and sys.path and sys.path[0] and __file__.startswith(sys.path[0]):
    # Run as a script (Lightning's DDP launcher re-executing `msma train`): do not let the package folder
    # shadow top-level module names.
    sys.path.pop(0)

import importlib.util
from pathlib import Path

from omegaconf import DictConfig

#: ``__main__`` module names of the sub-command dispatcher (``python -m msma.cli``).
_DISPATCHER_SPECS = ("msma.cli", "msma.cli.__main__")


def _hydra_task(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from msma.training.run import run_training

    result = run_training(cfg, Path(HydraConfig.get().runtime.output_dir))
    if result.interrupted:
        raise SystemExit(130)


def cli_main(argv: list[str] | None = None) -> int:
    """``msma train`` entry point: runs the Hydra application with ``argv`` as its command line.

    Example: ``msma train --config-name quickstart trainer.max_steps=100 logger.wandb.mode=disabled``.
    """
    import hydra

    from msma.config import experiments_dir, register_configs

    args = list(sys.argv[1:] if argv is None else argv)
    register_configs()
    main_mod = sys.modules.get("__main__")
    spec = getattr(main_mod, "__spec__", None)
    if main_mod is not None and spec is not None and spec.name in _DISPATCHER_SPECS:
        # Lightning's DDP launcher re-executes `python -m <__main__ module> <sys.argv[1:]>` for the other ranks:
        # point it at this module (which has a __main__ block) instead of the sub-command dispatcher.
        main_mod.__spec__ = importlib.util.find_spec("msma.cli.train")
    old_argv = sys.argv
    # sys.argv[0] is what Lightning runs for the other ranks when __main__ has no spec (the console script).
    sys.argv = [str(Path(__file__).resolve()), *args]
    try:
        app = hydra.main(config_path=str(experiments_dir()), config_name=None, version_base="1.3")(_hydra_task)
        app()
    except SystemExit as exc:
        code = exc.code
        return int(code) if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv = old_argv
    return 0


if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:]))
