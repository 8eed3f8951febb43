"""msma.training: everything ``msma train`` needs above the core.

``module`` (:class:`FaceReconModule`, orchestration only), ``callbacks`` (image grids, RNG state, interruption
checkpoint, loss history), ``trainer`` (Trainer, loggers, strategy, callbacks from the typed config groups),
``run_dir`` (:class:`RunDir`, the one writer/reader of ``runs/<name>/<id>/``), ``checkpoint`` (the training
module from a config or a checkpoint: the resume entry point), ``run`` (:func:`run_training`). Names below are
imported lazily so ``import msma.training.run_dir`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FaceReconModule": "msma.training.module",
    "RunDir": "msma.training.run_dir",
    "TrainResult": "msma.training.run",
    "run_training": "msma.training.run",
    "build_module": "msma.training.checkpoint",
    "load_training_module": "msma.training.checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'msma.training' has no attribute {name!r}")
