"""What the real-photo datasets share: the skip record, cropping a loaded photo, building a
:class:`~msma.data.batch.FaceSample`, and :class:`RobustDataset` (a failing item is logged and replaced by the next
good one, marked as its stand-in, so ``__getitem__`` never ends an epoch on one bad file).

The datasets themselves: :mod:`msma.data.datasets` (folders of photos) and :mod:`msma.data.mat_datasets`
(AFLW2000-3D, 300W-LP).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from msma.data.align import AlignedFace, apply_affine, warp_crop
from msma.data.batch import FaceSample
from msma.data.io import BadImageError, LoadedImage, image_to_tensor
from msma.data.landmarks import LandmarkError

log = logging.getLogger(__name__)

Transform = Callable[[FaceSample], FaceSample]
#: How many following items ``__getitem__`` tries when an item fails to load.
MAX_LOAD_RETRIES = 16


@dataclass(frozen=True)
class SkipRecord:
    """A file left out of a dataset: path, reason code, detail."""

    path: Path
    reason: str
    detail: str = ""


def crop_loaded(
    loaded: LoadedImage, crop_to_image: np.ndarray, landmarks: np.ndarray | None, image_size: int
) -> AlignedFace:
    """Crops a (possibly downscaled) loaded photo with a transform given in original-image pixels."""
    orig_to_loaded = np.linalg.inv(loaded.loaded_to_original())
    crop = warp_crop(loaded.image, orig_to_loaded @ crop_to_image, image_size)
    if landmarks is None:
        lm = np.full((68, 2), np.nan, dtype=np.float32)
    else:
        lm = apply_affine(np.linalg.inv(crop_to_image), landmarks).astype(np.float32)
    return AlignedFace(crop, lm, crop_to_image)


def make_sample(
    aligned: AlignedFace,
    source: str,
    yaw: float = math.nan,
    landmarks_3d: np.ndarray | None = None,
    params: torch.Tensor | None = None,
) -> FaceSample:
    return FaceSample(
        image=image_to_tensor(aligned.image),
        landmarks=torch.from_numpy(np.ascontiguousarray(aligned.landmarks, dtype=np.float32)),
        crop_to_image=torch.from_numpy(aligned.crop_to_image.astype(np.float32)),
        params=params,
        landmarks_3d=None if landmarks_3d is None else torch.from_numpy(np.asarray(landmarks_3d, np.float32)),
        yaw=float(yaw),
        source=source,
    )


#: What loading one item may raise for a bad file (caught, logged and counted by :class:`RobustDataset`).
LOAD_ERRORS: tuple[type[Exception], ...] = (BadImageError, LandmarkError, ValueError, OSError)


class RobustDataset(Dataset[FaceSample]):
    """Base: ``__getitem__`` logs a failing item and returns the next good one instead of raising (training: the
    batch stays full), marked as a stand-in (:attr:`~msma.data.batch.FaceSample.replaces`, collated into
    :attr:`~msma.data.batch.FaceBatch.replaced`, counted as ``train/load_failures`` / ``val/load_failures``).
    An evaluation must not score a photo in another's place: validation, testing and ``msma eval`` leave stand-ins
    out (:meth:`~msma.data.batch.FaceBatch.genuine`), per-photo evaluations use :meth:`load_strict`."""

    transform: Transform | None = None

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _load(self, index: int) -> FaceSample:  # pragma: no cover - abstract
        raise NotImplementedError

    def _describe(self, index: int) -> str:
        return f"item {index}"

    def load_strict(self, index: int) -> FaceSample:
        """Item ``index`` (transform applied), raising one of :data:`LOAD_ERRORS` if its files are bad; never
        another item in its place."""
        sample = self._load(index)
        return self.transform(sample) if self.transform is not None else sample

    def __getitem__(self, index: int) -> FaceSample:
        n = len(self)
        if n == 0:
            raise IndexError(f"{type(self).__name__} is empty")
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        index %= n
        errors = []
        for attempt in range(min(n, MAX_LOAD_RETRIES)):
            i = (index + attempt) % n
            try:
                sample = self._load(i)
            except LOAD_ERRORS as exc:
                log.warning(
                    "%s: %s failed to load (%s); using the next one", type(self).__name__, self._describe(i), exc
                )
                self.load_failures += 1
                errors.append(str(exc))
                continue
            if attempt:
                what = self._describe(index)
                reason = errors[0] if errors[0].startswith(what) else f"{what}: {errors[0]}"
                sample = dataclasses.replace(sample, replaces=reason)
            return self.transform(sample) if self.transform is not None else sample
        raise RuntimeError(f"{len(errors)} consecutive items failed to load from index {index}: {errors[-3:]}")

    load_failures: int = 0
