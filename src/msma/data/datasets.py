"""Folders of real photos as datasets yielding :class:`~msma.data.batch.FaceSample` (aligned 224 px crops).

* :class:`FolderDataset`: any folder of photos (CelebA, FFHQ, your own), pseudo-labelled through the label
  cache (detector + 68-point backend), Deep3D 5-point alignment; each face a sample or the largest only.
* :func:`stable_split`: the deterministic train/val split of a dataset.

The AFLW2000-3D and 300W-LP datasets live in :mod:`msma.data.mat_datasets` (re-exported here); the shared
machinery (skip records, :class:`~msma.data.dataset_base.RobustDataset`) in :mod:`msma.data.dataset_base`.

Bad files are skipped with a logged reason and counted (``skipped`` / ``skip_counts``) when the dataset is
built; a file that breaks later (changed on disk) is logged and replaced by the next good item, so
``__getitem__`` never ends an epoch on one bad file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from msma.data.align import (
    DEEP3D_CROP_SIZE,
    ICT_TEMPLATE_5P_MM,
    alignment_transform,
)
from msma.data.batch import FaceSample
from msma.data.cache import FaceLabel
from msma.data.dataset_base import RobustDataset, SkipRecord, Transform, crop_loaded, make_sample
from msma.data.detect import FaceSelection, make_detector
from msma.data.io import IMAGE_EXTENSIONS, list_images, load_image
from msma.data.landmarks import LandmarkBackend, make_landmark_backend
from msma.data.mat_datasets import AFLW2000Dataset, W300LPDataset
from msma.data.prepare import default_cache_dir, label_files
from msma.face_model.params import CoeffLayout

log = logging.getLogger(__name__)

__all__ = [
    "FIT_GROUPS",
    "AFLW2000Dataset",
    "FolderDataset",
    "SkipRecord",
    "W300LPDataset",
    "dense_to_crop",
    "stable_split",
]

#: Coefficient groups of a photo fit (``msma prepare --fit``) used as pseudo-parameters: the fit's pose and light
#: are those of its own crop (a square around the dense landmarks), not of the Deep3D-aligned training crop.
FIT_GROUPS: tuple[str, ...] = ("id", "exp", "tex")


def dense_to_crop(dense: np.ndarray, crop_to_image: np.ndarray, path: Path | str = "") -> torch.Tensor:
    """Dense MediaPipe points of a cache entry (original pixels) -> crop pixels.

    Args:
        dense: (K, 3) x, y in original-image pixels, z MediaPipe's relative depth in the same pixels; K = 478 or
            468.
        crop_to_image: (3, 3) crop -> image affine of the sample.
        path: the photo (error messages).

    Returns:
        (K, 3) float32: x, y through ``inv(crop_to_image)``, z divided by its scale (sqrt |det|).

    Raises:
        ValueError: a shape other than (468 | 478, 3) (the message names the photo).
    """
    from msma.data.mediapipe_mesh import NUM_DENSE, NUM_MESH

    pts = np.asarray(dense, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[0] not in (NUM_MESH, NUM_DENSE) or pts.shape[1] != 3:
        raise ValueError(f"{path}: cached dense landmarks have shape {pts.shape}, expected ({NUM_DENSE}, 3)")
    inv = np.linalg.inv(np.asarray(crop_to_image, dtype=np.float64))
    out = np.empty_like(pts)
    out[:, :2] = pts[:, :2] @ inv[:2, :2].T + inv[:2, 2]
    out[:, 2] = pts[:, 2] * float(np.sqrt(abs(np.linalg.det(inv[:2, :2]))))
    return torch.from_numpy(out.astype(np.float32))


class FolderDataset(RobustDataset):
    """Every face in a folder of photos, Deep3D-aligned with pseudo-labelled 68 landmarks.

    Building the dataset labels photos missing from the cache (``msma prepare`` / ``prepare_data`` do it
    ahead of time), so afterwards only cached labels are read.

    Args:
        root: folder (searched recursively for :data:`~msma.data.io.IMAGE_EXTENSIONS`).
        landmarks: ``"dlib"``, ``"fan"`` or ``"gt"`` (``.pts``/``.mat`` next to each photo; not cached).
        faces: ``"largest"`` (one sample per photo) or ``"all"`` (one per detected face).
        detector: face detector name (``"dlib"``, ``"opencv"``, ``"dlib+opencv"``).
        landmark_weights: model file of the backend, or None to locate it.
        cache_dir: label cache directory (default ``$MSMA_HOME/labels/<folder>-<hash>``).
        image_size: crop side S in pixels.
        template: (5, 3) alignment template in mm.
        transform: applied to each :class:`FaceSample` (e.g. :class:`~msma.data.transforms.FaceAugment`).
        device: torch device of the ``fan`` backend.
        files: explicit photo list instead of scanning ``root``.
        backend: a ready landmark backend (overrides ``landmarks``/``landmark_weights``).
        fit_layout: the training face model's coefficient layout: faces whose cache entry holds coefficients
            fitted to that model (``msma prepare --fit``, see ``fit_model_tag``) get them as pseudo-parameters
            (``params``, groups :data:`FIT_GROUPS` only). None: fits are not read.
        fit_model_tag: ``"<name>-<fingerprint>"`` of the training face model; a fit of another model is ignored
            (counted in ``fit_mismatches``).

    Attributes:
        skipped: :class:`SkipRecord` per photo without a usable face; ``skip_counts`` by reason.
        fitted: faces with pseudo-parameters.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        landmarks: str = "dlib",
        faces: FaceSelection = "largest",
        detector: str = "dlib",
        landmark_weights: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        image_size: int = DEEP3D_CROP_SIZE,
        template: np.ndarray = ICT_TEMPLATE_5P_MM,
        transform: Transform | None = None,
        device: str = "cpu",
        files: Sequence[str | os.PathLike[str]] | None = None,
        backend: LandmarkBackend | None = None,
        extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
        fit_layout: CoeffLayout | None = None,
        fit_model_tag: str | None = None,
    ) -> None:
        if faces not in ("all", "largest"):
            raise ValueError(f"faces must be 'all' or 'largest', got {faces!r}")
        self.root = Path(root)
        self.image_size = int(image_size)
        self.template = np.asarray(template, dtype=np.float64)
        self.transform = transform
        self.faces = faces
        paths = [Path(f) for f in files] if files is not None else list_images(self.root, extensions, unsupported=True)
        lm_backend = backend or make_landmark_backend(landmarks, landmark_weights, device=device)
        det = make_detector(detector) if lm_backend.needs_detector else None
        self.cache_dir = (
            None if not lm_backend.needs_detector else Path(cache_dir) if cache_dir else default_cache_dir(self.root)
        )
        run = label_files(paths, lm_backend, det, self.cache_dir, faces=faces)
        self.items: list[tuple[Path, FaceLabel]] = []
        self.skipped: list[SkipRecord] = []
        for path, labels in run.labels:
            if labels is None or not labels.ok:
                reason = labels.skip_reason if labels is not None else "unreadable"
                self.skipped.append(SkipRecord(path, reason or "unknown", labels.detail if labels else ""))
                continue
            for face in labels.select(faces):
                self.items.append((path, face))
        self.skip_counts: Counter[str] = Counter(s.reason for s in self.skipped)
        self.fit_layout = fit_layout
        self.fit_model_tag = fit_model_tag
        self.fitted = 0
        self.fit_mismatches = 0
        if fit_layout is not None:
            for _, face in self.items:
                if face.fit is None:
                    continue
                if fit_model_tag is not None and face.fit.get("face_model") != fit_model_tag:
                    self.fit_mismatches += 1
                else:
                    self.fitted += 1
            if self.fit_mismatches:
                log.warning(
                    "%s: %d cached fits belong to another face model than %s (not used)",
                    self.root,
                    self.fit_mismatches,
                    fit_model_tag,
                )
        if self.skipped:
            log.warning(
                "%s: %d of %d photos skipped (%s)",
                self.root,
                len(self.skipped),
                len(paths),
                ", ".join(f"{k}: {v}" for k, v in sorted(self.skip_counts.items())),
            )

    def __len__(self) -> int:
        return len(self.items)

    def _describe(self, index: int) -> str:
        return str(self.items[index][0])

    def _load(self, index: int) -> FaceSample:
        path, face = self.items[index]
        loaded = load_image(path)
        m = alignment_transform(face.landmarks, self.template, self.image_size)
        sample = make_sample(crop_loaded(loaded, m, face.landmarks, self.image_size), str(path))
        if face.dense is not None:
            sample = dataclasses.replace(sample, dense=dense_to_crop(face.dense, m, path))
        params = self._fitted_params(face, path)
        if params is None:
            return sample
        return dataclasses.replace(sample, params=params, param_groups=FIT_GROUPS)

    def _fitted_params(self, face: FaceLabel, path: Path) -> torch.Tensor | None:
        """(P,) flat pseudo-parameters of ``face`` (groups outside :data:`FIT_GROUPS` zero), or None."""
        fit, layout = face.fit, self.fit_layout
        if fit is None or layout is None:
            return None
        if self.fit_model_tag is not None and fit.get("face_model") != self.fit_model_tag:
            return None
        coeffs = fit.get("coefficients")
        if not isinstance(coeffs, dict):
            raise ValueError(f"{path}: cached fit has no coefficients")
        flat = torch.zeros(layout.total, dtype=torch.float32)
        for g in FIT_GROUPS:
            values = torch.as_tensor(coeffs.get(g, []), dtype=torch.float32).reshape(-1)
            if values.numel() != layout.sizes[g] or not bool(torch.isfinite(values).all()):
                raise ValueError(
                    f"{path}: cached fit {g} has {values.numel()} values, the training layout needs {layout.sizes[g]}"
                )
            flat[layout.slices[g]] = values
        return flat


def stable_split(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic train/val index split (same result on every rank and run).

    Returns:
        (train indices, val indices); val has ``round(n * val_fraction)`` items (at least 1 when
        ``val_fraction > 0`` and ``n > 1``).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = sorted(range(n), key=lambda i: hashlib.sha1(f"{seed}:{i}".encode()).hexdigest())
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n > 1:
        n_val = max(1, n_val)
    return sorted(order[n_val:]), sorted(order[:n_val])
