"""msma.data: face crops, landmark pseudo-labels, datasets and the LightningDataModule.

Submodules: ``batch`` (FaceSample/FaceBatch), ``io`` (safe image loading), ``detect`` (face boxes),
``landmarks`` (68-point backends), ``align`` (Deep3D 5-point and AFLW box crops), ``cache`` (label cache),
``datasets`` (folder, AFLW2000-3D, 300W-LP), ``synthetic``, ``transforms``, ``datamodule``, ``config``,
``prepare`` (``msma prepare``). Names below are imported lazily so ``import msma.data.batch`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FaceSample": "msma.data.batch",
    "FaceBatch": "msma.data.batch",
    "collate_samples": "msma.data.batch",
    "BadImageError": "msma.data.io",
    "load_image": "msma.data.io",
    "align_face": "msma.data.align",
    "crop_by_box": "msma.data.align",
    "make_landmark_backend": "msma.data.landmarks",
    "make_detector": "msma.data.detect",
    "FolderDataset": "msma.data.datasets",
    "AFLW2000Dataset": "msma.data.datasets",
    "W300LPDataset": "msma.data.datasets",
    "FaceDataModule": "msma.data.datamodule",
    "DataConfig": "msma.data.config",
    "build_datamodule": "msma.data.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'msma.data' has no attribute {name!r}")
