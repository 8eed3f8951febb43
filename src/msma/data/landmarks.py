"""68-point landmark backends behind one interface (iBUG / Multi-PIE 68-point scheme, 0-based indices).

* ``dlib``: dlib's ``shape_predictor_68_face_landmarks.dat`` (from the ``face-recognition-models`` PyPI
  package, Debian's ``libdlib-data`` or a given path); offline.
* ``fan``: the ``face-alignment`` package's 2D FAN-4 network; its weights (``2DFAN4-11f355bf06.pth.tar``) come
  from the torch hub cache (``$TORCH_HOME/hub/checkpoints``) or a given path; never downloaded here.
* ``mediapipe``: MediaPipe's Face Landmarker (478 dense points, 68 taken by a fixed index map), see
  :mod:`msma.data.mediapipe_backend`; its model bundle is fetched like the ICT archive.
* ``gt``: landmarks the dataset provides next to the image (``.pts`` or a ``.mat`` with ``pt3d_68``/``pt2d``).

All landmarks are pixel coordinates of the image given, x right, y down, pixel-index units (pixel (i, j)
centre at x=j, y=i). Every backend has ``name`` and ``version``; ``key`` (``"<name>-<version>"``) is the
label-cache key, so changing the model invalidates cached labels.
"""

from __future__ import annotations

import abc
import importlib.util
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from msma.data.annotation import check_points
from msma.data.detect import FaceBox, FaceDetector
from msma.utils.matlab import numeric_field

log = logging.getLogger(__name__)

NUM_LANDMARKS = 68
DLIB_PREDICTOR_NAME = "shape_predictor_68_face_landmarks.dat"
#: dlib's CNN (max-margin object detection) face detector, shipped beside the predictor by the same packages.
DLIB_CNN_DETECTOR_NAME = "mmod_human_face_detector.dat"
#: Debian/Ubuntu ``libdlib-data`` install location.
DEBIAN_DLIB_DIR = Path("/usr/share/dlib")
#: face-alignment 1.5's 2D FAN-4 checkpoint file name (``face_alignment/api.py`` ``models_urls['2DFAN-4']``).
FAN_2D_CHECKPOINT = "2DFAN4-11f355bf06.pth.tar"
#: face-alignment's crop conventions (``face_alignment/utils.py``): reference box scale and centre shift.
FAN_REFERENCE_SCALE = 195.0
FAN_CENTER_Y_OFFSET = 0.12


class LandmarkBackendUnavailable(RuntimeError):
    """A backend's model file or package is missing (the message says where it was looked for)."""


class LandmarkError(RuntimeError):
    """A backend could not produce landmarks for one image/face."""


class LandmarkBackend(abc.ABC):
    """Predicts 68 landmarks inside a face box.

    Attributes:
        name: backend name (``"dlib"``, ``"fan"``, ``"gt"``).
        version: model identity (package version + model file), part of the cache key.
        needs_detector: False when the backend supplies its own faces (``gt``).
    """

    name: str = ""
    version: str = ""
    needs_detector: bool = True

    @property
    def key(self) -> str:
        """``"<name>-<version>"``, the label-cache key."""
        return f"{self.name}-{self.version}"

    @abc.abstractmethod
    def detect(self, image: np.ndarray, box: FaceBox, source: Path | None = None) -> np.ndarray:
        """68 landmarks of the face in ``box``.

        Args:
            image: (H, W, 3) uint8 RGB.
            box: face box in ``image`` pixels.
            source: the image file (used by the ``gt`` backend only).

        Returns:
            (68, 2) float32 pixel coordinates (x right, y down).
        """

    def faces(self, image: np.ndarray, source: Path | None) -> list[np.ndarray] | None:
        """All faces' landmarks without a detector, or None when the backend needs boxes (default)."""
        return None

    def thread_copy(self, detector: FaceDetector | None) -> tuple[LandmarkBackend, FaceDetector | None] | None:
        """An independent (backend, detector) pair with the same cache key, safe to run in another thread beside
        this one, or None (default) when the pair must be copied by worker *processes* instead (a model that
        holds the GIL, keeps per-call state, or uses torch's own threads)."""
        return None


def _file_tag(path: Path) -> str:
    return f"{path.name}:{path.stat().st_size}"


# --------------------------------------------------------------------------------------------- dlib
def find_dlib_predictor(path: str | os.PathLike[str] | None = None) -> Path:
    """Locates dlib's 68-point predictor file.

    Search order: ``path``; ``$MSMA_DLIB_PREDICTOR``; the ``face_recognition_models`` package's ``models/``
    folder (found without importing it: its ``__init__`` needs ``pkg_resources``); Debian's
    ``/usr/share/dlib``; ``$MSMA_HOME/dlib``.

    Raises:
        LandmarkBackendUnavailable: not found anywhere (the message lists where it looked).
    """
    return find_dlib_file(DLIB_PREDICTOR_NAME, "MSMA_DLIB_PREDICTOR", path)


def find_dlib_file(name: str, env_var: str, path: str | os.PathLike[str] | None = None) -> Path:
    """Locates one of dlib's model files ``name`` (the predictor, the CNN face detector).

    Search order: ``path``; ``$<env_var>``; the ``face_recognition_models`` package's ``models/`` folder (found
    without importing it: its ``__init__`` needs ``pkg_resources``); Debian's ``/usr/share/dlib``;
    ``$MSMA_HOME/dlib``.

    Raises:
        LandmarkBackendUnavailable: not found anywhere (the message lists where it looked).
    """
    candidates: list[Path] = []
    if path is not None:
        given = Path(path)
        if not given.is_file():
            raise LandmarkBackendUnavailable(f"{given}: dlib model file {name} not found")
        return given
    env = os.environ.get(env_var)
    if env:
        candidates.append(Path(env))
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            candidates.append(Path(loc) / "models" / name)
    candidates.append(DEBIAN_DLIB_DIR / name)
    from msma.utils.home import msma_home

    candidates.append(msma_home() / "dlib" / name)
    for cand in candidates:
        if cand.is_file():
            return cand
    raise LandmarkBackendUnavailable(
        f"dlib's {name} not found (looked in: {', '.join(str(c) for c in candidates)}); "
        "install it offline with `pip install face-recognition-models` or `apt-get install libdlib-data`, "
        "or pass its path"
    )


class DlibLandmarks(LandmarkBackend):
    """dlib's ensemble-of-regression-trees 68-point predictor (Kazemi & Sullivan 2014, iBUG 300-W trained).

    Args:
        predictor_path: the ``.dat`` file; located with :func:`find_dlib_predictor` when None.
    """

    name = "dlib"

    def __init__(self, predictor_path: str | os.PathLike[str] | None = None) -> None:
        import dlib

        self.path = find_dlib_predictor(predictor_path)
        try:
            self._predictor = dlib.shape_predictor(str(self.path))
        except RuntimeError as exc:
            raise LandmarkBackendUnavailable(f"{self.path}: dlib cannot load the predictor ({exc})") from exc
        self.version = f"{dlib.__version__}-{_file_tag(self.path)}"

    def detect(self, image: np.ndarray, box: FaceBox, source: Path | None = None) -> np.ndarray:
        import dlib

        rect = dlib.rectangle(round(box.left), round(box.top), round(box.right), round(box.bottom))
        shape = self._predictor(np.ascontiguousarray(image), rect)
        if shape.num_parts != NUM_LANDMARKS:
            raise LandmarkError(f"dlib predictor {self.path} returned {shape.num_parts} points, expected 68")
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)


# ---------------------------------------------------------------------------------------------- fan
def find_fan_weights(path: str | os.PathLike[str] | None = None) -> Path:
    """Locates face-alignment's 2D FAN-4 checkpoint without downloading.

    Search order: ``path``; ``$MSMA_FAN_WEIGHTS``; ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub``,
    where face-alignment caches its download).

    Raises:
        LandmarkBackendUnavailable: not found (immediately; nothing is fetched).
    """
    if path is not None:
        given = Path(path)
        if not given.is_file():
            raise LandmarkBackendUnavailable(f"{given}: FAN weights file not found")
        return given
    import torch.hub

    candidates: list[Path] = []
    env = os.environ.get("MSMA_FAN_WEIGHTS")
    if env:
        candidates.append(Path(env))
    candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / FAN_2D_CHECKPOINT)
    for cand in candidates:
        if cand.is_file():
            return cand
    raise LandmarkBackendUnavailable(
        f"FAN weights {FAN_2D_CHECKPOINT} not found (looked in: {', '.join(str(c) for c in candidates)}); "
        "this machine may be offline: copy the file from a machine where face-alignment has run "
        "(its torch hub cache) into one of those places, or pass its path"
    )


class FanLandmarks(LandmarkBackend):
    """face-alignment's 2D FAN-4 (Bulat & Tzimiropoulos 2017) run inside a given box.

    The crop follows face-alignment's own convention (box centre shifted up by 12 % of the box height, scale
    = (w + h) / 195, 256 px input, 64 px heatmaps, flip averaging), so boxes from dlib's detector work.

    Args:
        weights: the ``2DFAN4-*.pth.tar`` state dict; located with :func:`find_fan_weights` when None.
        device: torch device for the network.
        flip_input: average with the prediction on the mirrored crop (face-alignment's default).
    """

    name = "fan"

    def __init__(
        self, weights: str | os.PathLike[str] | None = None, device: str = "cpu", flip_input: bool = True
    ) -> None:
        path = find_fan_weights(weights)
        try:
            import face_alignment
            import torch
            from face_alignment.models import FAN
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise LandmarkBackendUnavailable(f"the face-alignment package is not installed ({exc})") from exc
        net = FAN(4)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        except Exception as exc:
            raise LandmarkBackendUnavailable(f"{path}: not a FAN-4 state dict ({exc})") from exc
        self._net = net.to(device).eval()
        self.device = device
        self.flip_input = flip_input
        self.path = path
        self.version = f"fa{face_alignment.__version__}-{_file_tag(path)}"

    def detect(self, image: np.ndarray, box: FaceBox, source: Path | None = None) -> np.ndarray:
        import torch
        from face_alignment.utils import crop, flip, get_preds_fromhm

        center = np.array([box.center[0], box.center[1] - box.height * FAN_CENTER_Y_OFFSET])
        scale = (box.width + box.height) / FAN_REFERENCE_SCALE
        patch = crop(np.ascontiguousarray(image), center, scale).transpose(2, 0, 1).astype(np.float32) / 255.0
        inp = torch.from_numpy(patch)[None].to(self.device)
        with torch.no_grad():
            out = self._net(inp)
            heat = (out[-1] if isinstance(out, list) else out).detach()
            if self.flip_input:
                out_f = self._net(flip(inp))
                heat = heat + flip((out_f[-1] if isinstance(out_f, list) else out_f).detach(), is_label=True)
        _, pts_img, _ = get_preds_fromhm(heat.cpu().float().numpy(), center, scale)
        pts = np.asarray(pts_img, dtype=np.float32).reshape(-1, 2)
        if pts.shape[0] != NUM_LANDMARKS:
            raise LandmarkError(f"FAN returned {pts.shape[0]} points, expected 68")
        return pts


# ----------------------------------------------------------------------------------------------- gt
def read_pts(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads an iBUG/menpo ``.pts`` file (version 1) into 0-based pixel coordinates.

    ``.pts`` coordinates are 1-based (MATLAB convention of the 300-W annotations; menpo's importer subtracts
    one for the same reason), so 1 is subtracted to get pixel-index units.

    Returns:
        (K, 2) float32 (x, y).

    Raises:
        ValueError: malformed file (the message names it).
    """
    p = Path(path)
    lines = [ln.strip() for ln in p.read_text(errors="replace").splitlines() if ln.strip()]
    try:
        start, end = lines.index("{"), lines.index("}")
    except ValueError as exc:
        raise ValueError(f"{p}: not a .pts file (no '{{' ... '}}' block)") from exc
    n_declared = None
    for ln in lines[:start]:
        if ln.lower().startswith("n_points"):
            try:
                n_declared = int(ln.split(":", 1)[1])
            except (IndexError, ValueError) as exc:
                raise ValueError(f"{p}: bad n_points line {ln[:40]!r}") from exc
    try:
        pts = np.array([[float(v) for v in ln.split()[:2]] for ln in lines[start + 1 : end]], dtype=np.float32)
    except ValueError as exc:
        raise ValueError(f"{p}: non-numeric point in .pts file") from exc
    if pts.ndim != 2 or pts.shape[1] != 2 or (n_declared is not None and pts.shape[0] != n_declared):
        raise ValueError(f"{p}: .pts declares {n_declared} points, read {pts.shape}")
    return pts - 1.0


def read_mat_landmarks(path: str | os.PathLike[str]) -> np.ndarray:
    """68 landmarks from a 3DDFA-style ``.mat`` (AFLW2000-3D ``pt3d_68`` (3, 68) or 300W-LP ``pt2d`` (2, 68)).

    Returns:
        (68, 2) float32 (x, y), as stored (these datasets' benchmarks compare them as pixel coordinates).
    """
    import scipy.io

    p = Path(path)
    try:
        mat = scipy.io.loadmat(str(p))
    except Exception as exc:
        raise ValueError(f"{p}: unreadable .mat file ({exc})") from exc
    for key in ("pt3d_68", "pt2d"):
        if key in mat:
            arr = numeric_field(mat, key, p, np.float32)
            if arr.ndim == 2 and arr.shape[0] in (2, 3) and arr.shape[1] == NUM_LANDMARKS:
                return np.ascontiguousarray(arr[:2].T)
    raise ValueError(f"{p}: no 68-point landmarks (pt3d_68 (3,68) or pt2d (2,68))")


def sibling_annotation(source: Path) -> np.ndarray:
    """Reads the annotation stored next to ``source`` (``<stem>.pts`` first, then ``<stem>.mat``).

    Raises:
        LandmarkError: none found, unreadable, or with points that are not a face's (non-finite, beyond
            :data:`~msma.data.annotation.MAX_COORDINATE_PX`, no extent: :func:`~msma.data.annotation.check_points`).
    """
    for suffix, reader in ((".pts", read_pts), (".mat", read_mat_landmarks)):
        cand = source.with_suffix(suffix)
        if cand.is_file():
            try:
                pts = reader(cand)
            except ValueError as exc:
                raise LandmarkError(str(exc)) from exc
            if pts.shape != (NUM_LANDMARKS, 2):
                raise LandmarkError(f"{cand}: {pts.shape[0]} points, expected 68")
            try:  # as the 3DDFA .mat reader: an annotation is complete and plausible or it is not one
                return check_points(pts, cand)
            except ValueError as exc:
                raise LandmarkError(str(exc)) from exc
    raise LandmarkError(f"{source}: no ground-truth annotation (.pts or .mat) next to the image")


class GroundTruthLandmarks(LandmarkBackend):
    """Dataset-provided landmarks.

    Args:
        lookup: maps an image path to its (68, 2) landmarks; default :func:`sibling_annotation`.
    """

    name = "gt"
    version = "1"
    needs_detector = False

    def __init__(self, lookup: Callable[[Path], np.ndarray] | None = None) -> None:
        self._lookup = lookup or sibling_annotation

    def detect(self, image: np.ndarray, box: FaceBox, source: Path | None = None) -> np.ndarray:
        if source is None:
            raise LandmarkError("the gt backend needs the image's source path")
        return np.asarray(self._lookup(Path(source)), dtype=np.float32)

    def faces(self, image: np.ndarray, source: Path | None) -> list[np.ndarray] | None:
        if source is None:
            raise LandmarkError("the gt backend needs the image's source path")
        return [np.asarray(self._lookup(Path(source)), dtype=np.float32)]


def make_landmark_backend(
    name: str, path: str | os.PathLike[str] | None = None, device: str = "cpu"
) -> LandmarkBackend:
    """Builds a backend: ``"dlib"`` (``path``: predictor file), ``"fan"`` (``path``: weights), ``"mediapipe"``
    (``path``: ``face_landmarker.task``, see :mod:`msma.data.mediapipe_backend`), ``"mediapipe+fit"`` (also fitted
    coefficients, :mod:`msma.fitting.pseudo_labels`), ``"gt"``.

    Raises:
        ValueError: unknown name.
        LandmarkBackendUnavailable: the model file is missing.
    """
    if name == "dlib":
        return DlibLandmarks(path)
    if name == "fan":
        return FanLandmarks(path, device=device)
    if name == "gt":
        return GroundTruthLandmarks()
    if name in ("mediapipe", "mediapipe+fit"):
        from msma.data.mediapipe_backend import MediaPipeLandmarks
        from msma.utils.pinned import AssetError

        try:
            if name == "mediapipe+fit":
                from msma.fitting.pseudo_labels import MediaPipeFitLandmarks

                return MediaPipeFitLandmarks(path)
            return MediaPipeLandmarks(path)
        except (FileNotFoundError, AssetError) as exc:
            raise LandmarkBackendUnavailable(str(exc)) from exc
    raise ValueError(f"unknown landmark backend {name!r}; use 'dlib', 'fan', 'mediapipe' or 'gt'")


def mediapipe_fallback(purpose: str) -> tuple[FaceDetector, LandmarkBackend] | None:
    """MediaPipe's detection chain and landmark backend, for faces another detector missed; None (with a log
    line naming ``purpose``) when the ``mediapipe`` package or its model bundle is unavailable.

    The one fallback of ``msma reconstruct`` (:class:`~msma.inference.Reconstructor`) and of AFLW2000-3D's
    ``detect`` crops (:class:`~msma.data.mat_datasets.AFLW2000Dataset`).
    """
    from msma.data.detect import make_detector

    try:
        return make_detector("mediapipe"), make_landmark_backend("mediapipe")
    except (ImportError, OSError, RuntimeError, ValueError) as exc:  # no mediapipe or no bundle
        log.info("no MediaPipe fallback for %s: %s", purpose, exc)
        return None
