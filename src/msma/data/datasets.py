"""Real-photo datasets yielding :class:`~msma.data.batch.FaceSample` (aligned 224 px crops).

* :class:`FolderDataset`: any folder of photos (CelebA, FFHQ, your own), pseudo-labelled through the label
  cache (detector + 68-point backend), Deep3D 5-point alignment; each face a sample or the largest only.
* :class:`AFLW2000Dataset`: the AFLW2000-3D benchmark (``imageXXXXX.jpg`` + official ``.mat``).
* :class:`W300LPDataset`: 300W-LP (``*.jpg`` + ``.mat`` with 3DDFA's BFM parameters).

Bad files are skipped with a logged reason and counted (``skipped`` / ``skip_counts``) when the dataset is
built; a file that breaks later (changed on disk) is logged and replaced by the next good item, so
``__getitem__`` never ends an epoch on one bad file.

3DDFA's ``.mat`` files (parameters, landmarks, pose conversion) are read by :mod:`msma.data.threeddfa`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from msma.data.align import (
    DEEP3D_CROP_SIZE,
    ICT_TEMPLATE_5P_MM,
    AlignedFace,
    alignment_transform,
    apply_affine,
    box_crop_transform,
    warp_crop,
)
from msma.data.batch import FaceSample
from msma.data.cache import FaceLabel
from msma.data.detect import FaceBox, FaceSelection, make_detector
from msma.data.io import IMAGE_EXTENSIONS, BadImageError, LoadedImage, image_to_tensor, list_images, load_image
from msma.data.landmarks import LandmarkBackend, LandmarkError, make_landmark_backend
from msma.data.prepare import default_cache_dir, label_files
from msma.data.threeddfa import (
    MatRecord,
    ParamMapper,
    ThreeDDFAParams,
    read_3ddfa_mat,
    read_300wlp_landmarks,
    w300lp_landmarks_file,
)
from msma.face_model.params import CoeffLayout

log = logging.getLogger(__name__)

#: Coefficient groups of a photo fit (``msma prepare --fit``) used as pseudo-parameters: the fit's pose and light
#: are those of its own crop (a square around the dense landmarks), not of the Deep3D-aligned training crop.
FIT_GROUPS: tuple[str, ...] = ("id", "exp", "tex")

Transform = Callable[[FaceSample], FaceSample]
#: How many following items ``__getitem__`` tries when an item fails to load.
MAX_LOAD_RETRIES = 16


@dataclass(frozen=True)
class SkipRecord:
    """A file left out of a dataset: path, reason code, detail."""

    path: Path
    reason: str
    detail: str = ""


def _crop_loaded(
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


def _sample(
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


class _RobustDataset(Dataset[FaceSample]):
    """Base: ``__getitem__`` logs a failing item and returns the next good one instead of raising."""

    transform: Transform | None = None

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _load(self, index: int) -> FaceSample:  # pragma: no cover - abstract
        raise NotImplementedError

    def _describe(self, index: int) -> str:
        return f"item {index}"

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
            except (BadImageError, LandmarkError, ValueError, OSError) as exc:
                log.warning(
                    "%s: %s failed to load (%s); using the next one", type(self).__name__, self._describe(i), exc
                )
                self.load_failures += 1
                errors.append(str(exc))
                continue
            return self.transform(sample) if self.transform is not None else sample
        raise RuntimeError(f"{len(errors)} consecutive items failed to load from index {index}: {errors[-3:]}")

    load_failures: int = 0


class FolderDataset(_RobustDataset):
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
        paths = [Path(f) for f in files] if files is not None else list_images(self.root, extensions)
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
        sample = _sample(_crop_loaded(loaded, m, face.landmarks, self.image_size), str(path))
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


# ------------------------------------------------------------------------------------- 3DDFA .mat datasets
class _MatDataset(_RobustDataset):
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
            Deep3D alignment (never ground-truth points); a photo where that finds no face falls back to
            ``gt_box`` (logged, counted in ``detect_fallbacks``).
        image_size: crop side S.
        landmarks: backend for ``crop="detect"``.
        detector: face detector for ``crop="detect"``.
        landmark_weights: backend model file.
        cache_dir: label cache for ``crop="detect"``.
        template: alignment template for ``crop="detect"``.
        transform: applied to each sample.
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
    ) -> None:
        if crop not in ("gt_box", "detect"):
            raise ValueError(f"crop must be 'gt_box' or 'detect', got {crop!r}")
        super().__init__(root, recursive=False)
        self.crop = crop
        self.image_size = int(image_size)
        self.template = np.asarray(template, dtype=np.float64)
        self.transform = transform
        self.detected: list[np.ndarray | None] = [None] * len(self.records)
        self.detect_fallbacks = 0
        if crop == "detect" and self.records:
            backend = make_landmark_backend(landmarks, landmark_weights)
            if not backend.needs_detector:
                raise ValueError("crop='detect' must not use ground-truth landmarks (the 'gt' backend)")
            det = make_detector(detector)
            cache = Path(cache_dir) if cache_dir else default_cache_dir(self.root)
            run = label_files([r.image for r in self.records], backend, det, cache, faces="largest")
            for i, (_, labels) in enumerate(run.labels):
                if labels is not None and labels.ok:
                    self.detected[i] = labels.select("largest")[0].landmarks
                else:
                    self.detect_fallbacks += 1
                    log.warning("%s: no face detected; using the ground-truth box crop", self.records[i].image)

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
        aligned = _crop_loaded(loaded, self.crop_transform(index), rec.landmarks, self.image_size)
        return _sample(aligned, str(rec.image), yaw=rec.yaw, landmarks_3d=rec.landmarks_3d)


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
        sample = _sample(
            _crop_loaded(loaded, m, rec.landmarks, self.image_size), str(rec.image), rec.yaw, params=params
        )
        groups = getattr(self.param_mapper, "groups", None)
        return dataclasses.replace(sample, param_groups=tuple(groups)) if params is not None and groups else sample


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
