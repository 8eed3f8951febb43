"""The 3DDFA-labelled benchmark datasets, yielding :class:`~msma.data.batch.FaceSample` (aligned crops).

* :class:`AFLW2000Dataset`: the AFLW2000-3D benchmark (``imageXXXXX.jpg`` + official ``.mat``).
* :class:`W300LPDataset`: 300W-LP (``*.jpg`` + ``.mat`` with 3DDFA's BFM parameters).

Images whose annotation is missing or unreadable are skipped with a logged reason and counted (``skipped`` /
``skip_counts``). 3DDFA's ``.mat`` files (parameters, landmarks, pose conversion) are read by
:mod:`msma.data.threeddfa`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from msma.data.align import DEEP3D_CROP_SIZE, ICT_TEMPLATE_5P_MM, alignment_transform, box_crop_transform
from msma.data.batch import FaceSample
from msma.data.dataset_base import RobustDataset, SkipRecord, Transform, crop_loaded, make_sample
from msma.data.detect import FaceBox, FaceDetector, make_detector
from msma.data.io import IMAGE_REASONS, load_image
from msma.data.landmarks import LandmarkBackend, make_landmark_backend
from msma.data.landmarks import mediapipe_fallback as landmark_fallback
from msma.data.prepare import default_cache_dir, label_files
from msma.data.threeddfa import (
    MatRecord,
    ParamMapper,
    ThreeDDFAParams,
    read_3ddfa_mat,
    read_300wlp_landmarks,
    w300lp_landmarks_file,
)
from msma.utils.files import require_regular_file

log = logging.getLogger(__name__)


class _MatDataset(RobustDataset):
    """Images with a sibling 3DDFA ``.mat``; unreadable annotations are skipped and counted."""

    def __init__(self, root: str | os.PathLike[str], recursive: bool) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: dataset folder not found")
        pattern = "**/*.jpg" if recursive else "*.jpg"
        self.records: list[MatRecord] = []
        self.skipped: list[SkipRecord] = []
        for image in sorted(self.root.glob(pattern)):
            mat = image.with_suffix(".mat")
            if not mat.is_file():
                self.skipped.append(SkipRecord(image, "no_annotation", f"{mat.name} missing"))
                continue
            try:
                self.records.append(read_3ddfa_mat(image, mat))
            except ValueError as exc:
                self.skipped.append(SkipRecord(image, "bad_annotation", str(exc)))
        self.skip_counts: Counter[str] = Counter(s.reason for s in self.skipped)
        for s in self.skipped:
            log.warning("%s: skipped (%s: %s)", s.path, s.reason, s.detail)

    def __len__(self) -> int:
        return len(self.records)

    def _describe(self, index: int) -> str:
        return str(self.records[index].image)

    @property
    def yaws(self) -> np.ndarray:
        """(N,) ground-truth yaw in degrees, in item order."""
        return np.array([r.yaw for r in self.records], dtype=np.float64)


class AFLW2000Dataset(_MatDataset):
    """AFLW2000-3D (Zhu et al. 2016): 2,000 photos (450x450) with 3DDFA's 68-point 3D landmarks.

    Samples: ``landmarks`` = ground truth ``pt3d_68[:2]`` in crop pixels (for evaluation), ``landmarks_3d`` =
    ``pt3d_68.T`` in original-image pixels, ``yaw`` from ``Pose_Para`` (degrees), ``crop_to_image`` maps
    predictions back to the photo. ``params`` is None (3DDFA's BFM parameters, see the module docstring).

    Args:
        root: folder with ``image*.jpg`` + ``.mat``.
        crop: ``"gt_box"`` - the benchmark protocol (square on the ground-truth 68-point box, side sqrt(2) x
            max(w, h); see DESIGN.md), or ``"detect"`` - the package's own detector + landmark backend +
            Deep3D alignment (never ground-truth points); where that finds no face, MediaPipe's detection chain
            and landmarks are tried as ``msma reconstruct`` does (``mediapipe_fallback``; counted in
            ``detected_by_fallback``), and a photo still without a face falls back to ``gt_box`` (logged, counted
            in ``detect_fallbacks``).
        image_size: crop side S.
        landmarks: backend for ``crop="detect"``.
        detector: face detector for ``crop="detect"``.
        landmark_weights: backend model file.
        cache_dir: label cache for ``crop="detect"``.
        template: alignment template for ``crop="detect"``.
        transform: applied to each sample.
        mediapipe_fallback: for ``crop="detect"`` with another detector, retry the photos it finds no face in
            with MediaPipe's chain (:class:`~msma.inference.Reconstructor`'s fallback); skipped with a log line
            when MediaPipe or its bundle is unavailable.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        crop: Literal["gt_box", "detect"] = "gt_box",
        image_size: int = DEEP3D_CROP_SIZE,
        landmarks: str = "dlib",
        detector: str = "dlib",
        landmark_weights: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        template: np.ndarray = ICT_TEMPLATE_5P_MM,
        transform: Transform | None = None,
        mediapipe_fallback: bool = True,
    ) -> None:
        if crop not in ("gt_box", "detect"):
            raise ValueError(f"crop must be 'gt_box' or 'detect', got {crop!r}")
        super().__init__(root, recursive=False)
        self.crop = crop
        self.image_size = int(image_size)
        self.template = np.asarray(template, dtype=np.float64)
        self.transform = transform
        self.detected: list[np.ndarray | None] = [None] * len(self.records)
        #: why labelling could not read a photo (``"zero_byte"``, ``"truncated"``, ...), by item; such photos fail to
        #: load as well and are skipped there, not cropped from the ground-truth box.
        self.unreadable: dict[int, str] = {}
        self.detect_fallbacks = 0
        self.detected_by_fallback = 0
        #: crop -> image affines that replace :meth:`crop_transform` for some items (a second crop on a network's
        #: own landmarks, :func:`msma.data.align.recrop_transform`); empty by default.
        self.recrops: dict[int, np.ndarray] = {}
        if crop == "detect" and self.records:
            backend = make_landmark_backend(landmarks, landmark_weights)
            if not backend.needs_detector:
                raise ValueError("crop='detect' must not use ground-truth landmarks (the 'gt' backend)")
            cache = Path(cache_dir) if cache_dir else default_cache_dir(self.root)
            self._label(range(len(self.records)), backend, make_detector(detector), cache)
            missing = [i for i, d in enumerate(self.detected) if d is None]
            pair = None
            if missing and mediapipe_fallback and detector != "mediapipe":
                pair = landmark_fallback(f"the AFLW2000-3D photos {detector} finds no face in")
            if pair is not None:
                self.detected_by_fallback = self._label(missing, pair[1], pair[0], cache)
            for i, d in enumerate(self.detected):
                if d is None and i not in self.unreadable:
                    self.detect_fallbacks += 1
                    log.warning("%s: no face detected; using the ground-truth box crop", self.records[i].image)

    def _label(self, indices: Sequence[int], backend: LandmarkBackend, det: FaceDetector, cache: Path) -> int:
        """Labels the records ``indices`` through the cache; stores the largest face's 68 points; returns how
        many got one."""
        indices = list(indices)
        run = label_files([self.records[i].image for i in indices], backend, det, cache, faces="largest")
        by_path = dict(run.labels)  # a file that vanished or cannot be read has no entry
        found = 0
        for i in indices:
            labels = by_path.get(self.records[i].image)
            if labels is not None and labels.ok:
                self.detected[i] = labels.select("largest")[0].landmarks
                self.unreadable.pop(i, None)
                found += 1
            elif labels is not None and labels.skip_reason in IMAGE_REASONS:
                self.unreadable[i] = labels.skip_reason
        return found

    def box_cropped(self, index: int) -> bool:
        """Whether item ``index`` is cropped from a box (``gt_box``, or ``detect`` where no face was found) rather
        than aligned on detected landmarks."""
        return self.crop != "detect" or self.detected[index] is None

    def crop_transform(self, index: int) -> np.ndarray:
        """(3, 3) crop -> image affine of item ``index`` (no image decoding)."""
        rec = self.records[index]
        detected = self.detected[index]
        if self.crop == "detect" and detected is not None:
            return alignment_transform(detected, self.template, self.image_size)
        box = FaceBox.from_points(rec.landmarks)
        return box_crop_transform((box.left, box.top, box.right, box.bottom), self.image_size)

    def _load(self, index: int) -> FaceSample:
        rec = self.records[index]
        loaded = load_image(rec.image)
        m = self.recrops.get(index)
        aligned = crop_loaded(loaded, self.crop_transform(index) if m is None else m, rec.landmarks, self.image_size)
        return make_sample(aligned, str(rec.image), yaw=rec.yaw, landmarks_3d=rec.landmarks_3d)


class W300LPDataset(_MatDataset):
    """300W-LP (Zhu et al. 2016): 61k (flipped: 122k) synthesised large-pose photos with 3DDFA fits.

    **Landmarks.** The image's ``.mat`` holds ``pt2d``, the 2D convention: at large yaw the hidden-side jaw points
    lie on the visible contour, which disagrees with the face model's fixed 3D landmark vertices. The
    distribution's ``landmarks/<SUBSET>/<name>_pts.mat`` files hold ``pts_3d``, the projection of the 68 3D
    landmarks (:func:`read_300wlp_landmarks`): where that file exists it is the ``landmarks`` target (and the
    alignment input), mirrored for the ``_Flip`` images (:func:`w300lp_landmarks_file`); elsewhere ``pt2d`` is.
    ``landmark_counts`` counts each (``{"pts_3d": n, "pt2d": m}``, logged once); ``MatRecord.landmark_source``
    says it per image. A landmarks file that exists but cannot be read skips its image (``bad_annotation``,
    the message names the file), as a broken image ``.mat`` does.

    Crops are Deep3D-aligned on those same 68 landmarks (training data, so ground-truth alignment is
    legitimate). ``params`` is filled by ``param_mapper`` (3DDFA parameters -> the training face model's flat
    coefficients) or None; see the module docstring for why no mapping is built in.

    Args:
        root: 300W-LP folder (searched recursively: AFW/, HELEN/, IBUG/, LFPW/ and their _Flip twins).
        image_size: crop side S.
        template: alignment template.
        param_mapper: optional mapping of :class:`ThreeDDFAParams` to a flat coefficient tensor.
        transform: applied to each sample.
        landmarks_dir: the folder of the 3D-convention ``_pts.mat`` files, relative to ``root`` (or absolute);
            None: always ``pt2d``.

    Attributes:
        landmark_counts: images per landmark source (``"pts_3d"``, ``"pt2d"``).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        image_size: int = DEEP3D_CROP_SIZE,
        template: np.ndarray = ICT_TEMPLATE_5P_MM,
        param_mapper: ParamMapper | None = None,
        transform: Transform | None = None,
        landmarks_dir: str | os.PathLike[str] | None = "landmarks",
    ) -> None:
        super().__init__(root, recursive=True)
        self.image_size = int(image_size)
        self.template = np.asarray(template, dtype=np.float64)
        self.param_mapper = param_mapper
        self.transform = transform
        self.landmarks_dir = None if landmarks_dir is None else self.root / Path(landmarks_dir)
        if self.landmarks_dir is not None:
            self._use_3d_landmarks(self.landmarks_dir)
        self.landmark_counts: Counter[str] = Counter(r.landmark_source for r in self.records)
        if self.records:
            log.log(
                logging.WARNING if self.landmarks_dir is not None and self.landmark_counts["pt2d"] else logging.INFO,
                "%s: 68 landmarks from %s/*_pts.mat pts_3d (3D convention) for %d images, from pt2d (2D contour "
                "convention, no landmarks file) for %d",
                self.root,
                self.landmarks_dir,
                self.landmark_counts["pts_3d"],
                self.landmark_counts["pt2d"],
            )

    def _use_3d_landmarks(self, landmarks_dir: Path) -> None:
        """Replaces each record's ``pt2d`` by its landmarks file's ``pts_3d`` where one exists."""
        from PIL import Image

        from msma.data.landmark_index import flip_landmarks

        kept: list[MatRecord] = []
        for rec in self.records:
            path, mirrored = w300lp_landmarks_file(self.root, rec.image, landmarks_dir)
            if not path.is_file():
                kept.append(rec)
                continue
            try:
                pts = read_300wlp_landmarks(path)
                if mirrored:
                    try:
                        require_regular_file(rec.image)  # a named pipe would block the open forever
                        with Image.open(rec.image) as im:
                            width = int(im.size[0])
                    except Exception as exc:  # the image's size is needed to mirror the twin's points
                        raise ValueError(f"{rec.image}: unreadable image header ({exc})") from exc
                    pts = flip_landmarks(torch.from_numpy(pts), width).numpy()
            except ValueError as exc:
                skip = SkipRecord(rec.image, "bad_annotation", str(exc))
                self.skipped.append(skip)
                log.warning("%s: skipped (%s: %s)", skip.path, skip.reason, skip.detail)
                continue
            kept.append(dataclasses.replace(rec, landmarks=pts.astype(np.float32), landmark_source="pts_3d"))
        self.records = kept
        self.skip_counts = Counter(s.reason for s in self.skipped)

    def parameters(self, index: int) -> ThreeDDFAParams:
        """3DDFA's parameters of item ``index``."""
        return self.records[index].params

    def _load(self, index: int) -> FaceSample:
        rec = self.records[index]
        loaded = load_image(rec.image)
        m = alignment_transform(rec.landmarks, self.template, self.image_size)
        params = self.param_mapper(rec.params) if self.param_mapper is not None else None
        sample = make_sample(
            crop_loaded(loaded, m, rec.landmarks, self.image_size), str(rec.image), rec.yaw, params=params
        )
        groups = getattr(self.param_mapper, "groups", None)
        return dataclasses.replace(sample, param_groups=tuple(groups)) if params is not None and groups else sample
