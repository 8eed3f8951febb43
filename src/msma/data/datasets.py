"""Real-photo datasets yielding :class:`~msma.data.batch.FaceSample` (aligned 224 px crops).

* :class:`FolderDataset`: any folder of photos (CelebA, FFHQ, your own), pseudo-labelled through the label
  cache (detector + 68-point backend), Deep3D 5-point alignment; each face a sample or the largest only.
* :class:`AFLW2000Dataset`: the AFLW2000-3D benchmark (``imageXXXXX.jpg`` + official ``.mat``).
* :class:`W300LPDataset`: 300W-LP (``*.jpg`` + ``.mat`` with 3DDFA's BFM parameters).

Bad files are skipped with a logged reason and counted (``skipped`` / ``skip_counts``) when the dataset is
built; a file that breaks later (changed on disk) is logged and replaced by the next good item, so
``__getitem__`` never ends an epoch on one bad file.

**3DDFA parameters are not Deep3D's.** 300W-LP / AFLW2000-3D store 3DDFA's fit (Zhu et al. 2016):
``Shape_Para`` (199,) weights the full BFM 2009 shape PCA (all 53,490 vertices; the basis there is scaled by
the eigenvalues in 3DDFA's own convention), ``Exp_Para`` (29,) weights 3DDFA's expression PCA built from
FaceWarehouse. Deep3D's model uses the first 80 BFM identity components on its 35,709-vertex front crop and a
64-component expression basis (Guo et al. 2018, also from FaceWarehouse but a different PCA). Identity
could be mapped by keeping the first 80 components with the eigenvalue rescaling; expressions can only be
mapped by a least-squares fit between the two bases' vertex offsets, which needs both bases (the user's BFM
files). So this module exposes the raw parameters (:class:`ThreeDDFAParams`) and fills
``FaceSample.params`` only through a ``param_mapper``: :class:`PoseParamMapper` maps the pose, which carries
over into any face model (:func:`threeddfa_angles`); identity / expression need a user-supplied mapper.
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


# ------------------------------------------------------------------------------------- 3DDFA .mat files
@dataclass(frozen=True)
class ThreeDDFAParams:
    """3DDFA's fitted parameters of one image (300W-LP / AFLW2000-3D ``.mat``), as stored.

    Attributes:
        pose: (7,) ``Pose_Para``: pitch, yaw, roll (radians), tx, ty, tz, scale.
        shape: (199,) ``Shape_Para`` (BFM 2009 shape PCA weights, 3DDFA convention).
        exp: (29,) ``Exp_Para`` (3DDFA's FaceWarehouse expression PCA weights).
        tex: (199,) ``Tex_Para`` or None.
    """

    pose: np.ndarray
    shape: np.ndarray
    exp: np.ndarray
    tex: np.ndarray | None = None

    @property
    def yaw_degrees(self) -> float:
        return float(np.degrees(self.pose[1]))


@dataclass(frozen=True)
class MatRecord:
    """One annotated image.

    Attributes:
        image: the ``.jpg``.
        landmarks: (68, 2) float32 ground-truth 2D landmarks, original-image pixels (``pt3d_68[:2].T`` for
            AFLW2000-3D; for 300W-LP ``pts_3d`` of its ``landmarks/`` files where present, else ``pt2d.T``).
        landmarks_3d: (68, 3) float32 ``pt3d_68.T`` (AFLW2000-3D) or None.
        params: 3DDFA parameters.
        landmark_source: where ``landmarks`` came from: ``"pt3d_68"``, ``"pt2d"`` (2D contour convention) or
            ``"pts_3d"`` (300W-LP's 3D-convention landmarks file, see :func:`read_300wlp_landmarks`).
    """

    image: Path
    landmarks: np.ndarray
    landmarks_3d: np.ndarray | None
    params: ThreeDDFAParams
    landmark_source: str = "pt2d"

    @property
    def yaw(self) -> float:
        """Ground-truth yaw in degrees (``Pose_Para[1]``)."""
        return self.params.yaw_degrees


def _vector(mat: dict[str, np.ndarray], key: str, size: int, path: Path, required: bool = True) -> np.ndarray | None:
    if key not in mat:
        if required:
            raise ValueError(f"{path}: missing {key}")
        return None
    arr = np.asarray(mat[key], dtype=np.float64).reshape(-1)
    if arr.size != size or not np.isfinite(arr).all():
        raise ValueError(f"{path}: {key} has {arr.size} values (need {size} finite)")
    return arr


def read_3ddfa_mat(image: Path, mat_path: Path) -> MatRecord:
    """Reads an AFLW2000-3D / 300W-LP annotation with ``scipy.io.loadmat`` (no pickle).

    Raises:
        ValueError: unreadable file or missing/malformed fields (the message names the file and field).
    """
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(mat_path))
    except Exception as exc:
        raise ValueError(f"{mat_path}: unreadable .mat file ({exc})") from exc
    lm3d = None
    if "pt3d_68" in mat:
        pt3d = np.asarray(mat["pt3d_68"], dtype=np.float32)
        if pt3d.shape != (3, 68) or not np.isfinite(pt3d).all():
            raise ValueError(f"{mat_path}: pt3d_68 has shape {pt3d.shape}, expected finite (3, 68)")
        lm3d = np.ascontiguousarray(pt3d.T)
        lm2d = np.ascontiguousarray(lm3d[:, :2])
        source = "pt3d_68"
    elif "pt2d" in mat:
        pt2d = np.asarray(mat["pt2d"], dtype=np.float32)
        if pt2d.shape != (2, 68) or not np.isfinite(pt2d).all():
            raise ValueError(f"{mat_path}: pt2d has shape {pt2d.shape}, expected finite (2, 68)")
        lm2d = np.ascontiguousarray(pt2d.T)
        source = "pt2d"
    else:
        raise ValueError(f"{mat_path}: no 68-point landmarks (pt3d_68 or pt2d)")
    pose = _vector(mat, "Pose_Para", 7, mat_path)
    shape = _vector(mat, "Shape_Para", 199, mat_path)
    exp = _vector(mat, "Exp_Para", 29, mat_path)
    tex = _vector(mat, "Tex_Para", 199, mat_path, required=False)
    assert pose is not None and shape is not None and exp is not None
    return MatRecord(image, lm2d, lm3d, ThreeDDFAParams(pose=pose, shape=shape, exp=exp, tex=tex), source)


#: Key of the 3D-convention landmarks in 300W-LP's ``landmarks/<SUBSET>/<name>_pts.mat`` files.
W300LP_LANDMARKS_KEY = "pts_3d"


def read_300wlp_landmarks(path: Path) -> np.ndarray:
    """The 68 3D-convention landmarks of a 300W-LP ``landmarks/<SUBSET>/<name>_pts.mat`` file.

    The 300W-LP distribution ships, beside the image folders, ``landmarks/{AFW,HELEN,IBUG,LFPW}/<name>_pts.mat``
    (no ``_Flip`` subsets) with two (68, 2) arrays in original-image pixels: ``pts_2d``, the 2D convention (jaw
    points on the visible contour, as ``pt2d`` of the image's own ``.mat``), and ``pts_3d``, the 2D projection of
    the 68 3D landmarks of 3DDFA's fitted face (jaw points where the 3D jaw vertices project, hidden side
    included) - the convention of the face model's landmark vertices. Layout as read by public loaders:
    Chenxu-nmsu/Face_AI_Application ``02_face_landmarks/read_300wlp_data.py`` (``loadmat(".../300W_LP/landmarks/
    AFW/AFW_134212_1_0_pts.mat")["pts_2d"]``, 68 rows of x, y drawn on ``300W_LP/AFW/AFW_134212_1_0.jpg``) and the
    ``W300LP`` loaders derived from hzh8311/pyhowfar (``main_pts['pts_2d'] if pointType == '2D' else
    main_pts['pts_3d']``, indexed ``pts[i, 0]`` for i < 68); a head-pose loader reads ``pts_3d`` of
    ``landmarks/<SUBSET without _Flip>/`` and mirrors it for the ``_Flip`` images.

    Args:
        path: the ``_pts.mat`` file.

    Returns:
        (68, 2) float32 x, y, original-image pixels (the convention of ``pt2d``: no offset applied).

    Raises:
        ValueError: unreadable file, no ``pts_3d``, wrong shape or non-finite values (the message names the file).
    """
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:
        raise ValueError(f"{path}: unreadable 300W-LP landmarks file ({exc})") from exc
    if W300LP_LANDMARKS_KEY not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{path}: no {W300LP_LANDMARKS_KEY} in the 300W-LP landmarks file (keys: {keys})")
    pts = np.asarray(mat[W300LP_LANDMARKS_KEY], dtype=np.float32)
    if pts.shape != (68, 2) or not np.isfinite(pts).all():
        raise ValueError(f"{path}: {W300LP_LANDMARKS_KEY} has shape {pts.shape}, expected finite (68, 2)")
    return np.ascontiguousarray(pts)


def w300lp_landmarks_file(root: Path, image: Path, landmarks_dir: Path) -> tuple[Path, bool]:
    """Where the 3D-convention landmarks of a 300W-LP image are: (file, mirrored?).

    ``<root>/<SUBSET>/<name>.jpg`` -> ``<landmarks_dir>/<SUBSET>/<name>_pts.mat``. For a ``<SUBSET>_Flip`` image
    without a file of its own under ``<landmarks_dir>/<SUBSET>_Flip/`` (the distribution has none), the file of
    the unflipped twin ``<landmarks_dir>/<SUBSET>/<name>_pts.mat`` is returned with ``mirrored=True``: its
    points must be mirrored (:func:`~msma.data.landmark_index.flip_landmarks`) to describe the flipped image.
    """
    rel = image.relative_to(root)
    name = f"{image.stem}_pts.mat"
    direct = landmarks_dir / rel.parent / name
    subset = rel.parent.name
    if direct.is_file() or not subset.endswith("_Flip"):
        return direct, False
    return landmarks_dir / rel.parent.parent / subset[: -len("_Flip")] / name, True


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


ParamMapper = Callable[[ThreeDDFAParams], "torch.Tensor | None"]


def threeddfa_rotation(pose: np.ndarray) -> np.ndarray:
    """(3, 3) rotation of 3DDFA's ``Pose_Para`` (pitch, yaw, roll in radians) in the training model's frame.

    3DDFA's rotation (300W-LP / AFLW2000-3D) is the transpose of Deep3D's ``Rz(roll) Ry(yaw) Rx(pitch)`` with the
    same three numbers, in the same y-up model frame (image y = -y). Checked on the real files under
    ``../shared/testdata`` (``tests/unit/test_data_sources.py``): the mean face rotated this way matches their
    68 landmarks up to scale and shift at 3-6 % NME, the untransposed matrix at 7-27 %.
    """
    from msma.face_model.rotation import euler_to_matrix

    angles = torch.as_tensor(np.asarray(pose[:3], dtype=np.float64))[None]
    return euler_to_matrix(angles)[0].T.numpy()


def threeddfa_angles(pose: np.ndarray) -> np.ndarray:
    """(3,) pitch, yaw, roll (radians) of the training model (``R = Rz Ry Rx``) for 3DDFA's ``Pose_Para``.

    The crops are aligned by scale and translation only (Deep3D's alignment has no in-plane rotation), so these
    angles describe the aligned crop exactly (up to perspective: 3DDFA's camera is weak-perspective).
    """
    from msma.face_model.rotation import matrix_to_euler

    r = torch.as_tensor(threeddfa_rotation(pose))[None]
    return matrix_to_euler(r)[0].numpy()


class PoseParamMapper:
    """3DDFA parameters -> flat coefficients with the pose (``angles``) only: what carries over into any face
    model without its basis (identity / expression / translation need a model-specific mapping, docs/data.md).

    Args:
        layout: the training face model's coefficient layout.

    Attributes:
        groups: the coefficient groups the mapped vector holds (``FaceSample.param_groups``).
    """

    groups: tuple[str, ...] = ("angles",)

    def __init__(self, layout: CoeffLayout) -> None:
        self.layout = layout

    def __call__(self, params: ThreeDDFAParams) -> torch.Tensor:
        flat = torch.zeros(self.layout.total, dtype=torch.float32)
        flat[self.layout.slices["angles"]] = torch.from_numpy(threeddfa_angles(params.pose).astype(np.float32))
        return flat


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
