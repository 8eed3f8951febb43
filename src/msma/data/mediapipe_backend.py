"""MediaPipe's 478 dense landmarks as a detection chain that misses no face, and the ``mediapipe`` landmark backend.

The landmarker itself (:class:`~msma.data.mediapipe_landmarker.MediaPipeFaceMesh`: a full frame, crops around a
box, tiles) is in :mod:`msma.data.mediapipe_landmarker`. The bundle's own detector is BlazeFace *short range*: it
misses faces smaller than about a tenth of the frame and profiles beyond about 60-70 degrees of yaw. The chain
(:class:`MediaPipeDetector`) therefore

1. runs the landmarker on the full frame (every face it finds, largest first) and keeps the faces the bundle's
   detector scores at least :data:`FULL_FRAME_MIN_SCORE` (the landmarker itself runs at 0.3 so that crops of
   turned faces are confirmed; on a whole frame that let through faces on a clock or on cells);
2. when that finds nothing, searches overlapping tiles, coarse to fine (tiles down to 240 px: faces down to
   about 60 px; the bundle's detector alone on each tile; small candidates need a score of
   :data:`~msma.data.mediapipe_landmarker.TILE_SMALL_MIN_SCORE`), and confirms and refines each candidate with the
   landmarker on a crop centred on it;
3. when that finds nothing either (or when all faces are wanted) asks box detectors for candidates: dlib's HOG
   frontal detector with upsampling (small faces), OpenCV's profile cascade on the image and on its mirror image
   (``haarcascade_profileface.xml`` only knows one side) and OpenCV's frontal cascade; overlapping boxes are
   merged;
   and runs the landmarker again on an upsampled square crop around each new box (several margins);
4. when all that finds nothing, asks dlib's CNN face detector (``mmod_human_face_detector.dat``, shipped by
   ``face-recognition-models``; it sees turned profiles the HOG and Haar detectors miss, at 1-3 s an image, so it
   runs last) and treats its boxes as in 3;
5. keeps boxes where the landmarker still fails (extreme profiles) as *box-only* faces, so a caller can crop
   them for the network; the reason stays with the face.

All coordinates are pixels of the image given (x right, y down, pixel-index units). MediaPipe's normalised
``(x, y, z)`` become ``(x * W - 0.5, y * H - 0.5, z * W)``: z is MediaPipe's relative depth (same scale as x,
smaller = nearer the camera, origin near the head's centre).

:class:`MediaPipeLandmarks` is the ``mediapipe`` 68-point backend
(:data:`~msma.data.mediapipe_mesh.MEDIAPIPE_TO_68`); it shares the
chain's landmarker and reuses what the chain found for a box instead of running the network twice.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np

from msma.data.detect import FaceBox, FaceDetector
from msma.data.landmarks import LandmarkBackend, LandmarkError

# The landmarker and what callers imported from here before it had its own module (re-exported).
from msma.data.mediapipe_landmarker import SAME_FACE_OVERLAP as SAME_FACE_OVERLAP
from msma.data.mediapipe_landmarker import DenseFace as DenseFace
from msma.data.mediapipe_landmarker import MediaPipeFaceMesh as MediaPipeFaceMesh
from msma.data.mediapipe_landmarker import shared_face_mesh as shared_face_mesh

log = logging.getLogger(__name__)

#: Least score of the bundle's detector for a face the landmarker found on the full frame (MediaPipe's own default
#: detection threshold). Measured (``benchmarks/small_faces.py``, ``benchmarks/profile_detection.py``): every real
#: face of ``../shared/testdata`` scores 0.75-0.94 and the renders' correct profile meshes at 55-85 degrees 0.64-0.90;
#: the faces reported on skimage's clock and cell photos scored 0.34 and 0.30, a frontal mesh on a profile render
#: 0.35.
FULL_FRAME_MIN_SCORE = 0.5


class _Memo:
    """What the chain found in the last image, so the backend does not run the landmarker twice."""

    def __init__(self) -> None:
        self.image_id: tuple[int, tuple[int, ...]] | None = None
        self.faces: dict[tuple[float, ...], DenseFace] = {}
        self.reason = ""


def _image_id(image: np.ndarray) -> tuple[int, tuple[int, ...]]:
    return (image.__array_interface__["data"][0], tuple(image.shape))


class MediaPipeDetector:
    """The detection chain of the module docstring, as a :class:`~msma.data.detect.FaceDetector`.

    Args:
        mesh: the landmarker (default: the shared one for the default bundle).
        fallbacks: box detectors for stage 3 (default: dlib HOG upsampled, OpenCV profile both sides, OpenCV
            frontal).
        last_resort: box detectors for stage 4, run only when every earlier stage found nothing (default: dlib's
            CNN detector).

    Attributes:
        exhaustive: also run the box detectors when the landmarker found faces (finds small faces beside large
            ones; slower). Off by default: the box detectors run only when the landmarker finds no face.
        last_reason: why the last :meth:`detect` found nothing (empty when it found a face).
    """

    name = "mediapipe_chain"

    def __init__(
        self,
        mesh: MediaPipeFaceMesh | None = None,
        fallbacks: list[object] | None = None,
        last_resort: list[object] | None = None,
    ) -> None:
        self.mesh = mesh if mesh is not None else shared_face_mesh()
        self._fallbacks = fallbacks
        self._last_resort = last_resort
        self.exhaustive = False
        self.memo = _Memo()
        # 2: tiles searched with the detector alone; 3: dlib's CNN detector when every other stage found nothing;
        # 4: small tile candidates and full-frame faces need a detector score of 0.5 (TILE_SMALL_MIN_SCORE,
        # FULL_FRAME_MIN_SCORE).
        self.version = f"{self.mesh.version}-chain4"
        self.last_reason = ""

    def _fallback_detectors(self) -> list[object]:
        if self._fallbacks is None:
            from msma.data.detect import DlibHogDetector

            built: list[object] = []
            try:
                built.append(DlibHogDetector(upsample=1, max_side=2048))
            except ImportError:  # pragma: no cover - dlib is a declared extra
                log.warning("dlib is not installed: the detection chain runs without the HOG detector")
            built.append(ProfileCascadeDetector())
            self._fallbacks = built
        return self._fallbacks

    def _last_resort_detectors(self) -> list[object]:
        if self._last_resort is None:
            from msma.data.detect import DlibCnnDetector
            from msma.data.landmarks import LandmarkBackendUnavailable

            built: list[object] = []
            try:
                built.append(DlibCnnDetector())
            except (ImportError, LandmarkBackendUnavailable) as exc:  # pragma: no cover - shipped with the extras
                log.warning("the detection chain runs without dlib's CNN detector: %s", exc)
            self._last_resort = built
        return self._last_resort

    def faces(self, image: np.ndarray, largest_only: bool = False) -> list[DenseFace]:
        """Every face of an (H, W, 3) uint8 RGB image, largest first (box-only faces after dense ones)."""
        found, doubtful = self._confident(image, self.mesh.run(image))
        if found and (largest_only or not self.exhaustive):
            return found
        for f in self.mesh.run_tiled(image, doubtful=[d.box for d in doubtful]):
            if not any(f.box.overlap(g.box) > SAME_FACE_OVERLAP for g in found):
                found.append(f)
        if found and (largest_only or not self.exhaustive):
            return sorted(found, key=lambda f: -f.box.area)
        self._add_boxes(image, self._fallback_detectors(), found)
        if not found:
            # Last: dlib's CNN detector (wider poses than HOG, ~1-3 s an image), only where nothing else looked.
            self._add_boxes(image, self._last_resort_detectors(), found)
        dense_faces = sorted([f for f in found if f.points is not None], key=lambda f: -f.box.area)
        box_only = sorted([f for f in found if f.points is None], key=lambda f: -f.box.area)
        return dense_faces + box_only

    def _confident(self, image: np.ndarray, faces: list[DenseFace]) -> tuple[list[DenseFace], list[DenseFace]]:
        """(the full-frame faces whose box the bundle's detector scores at least :data:`FULL_FRAME_MIN_SCORE`, the
        others) (one detector run, ~1.5 ms, only when the landmarker found a face)."""
        if not faces:
            return [], []
        boxes = self.mesh.detect_boxes(image)
        kept: list[DenseFace] = []
        doubtful: list[DenseFace] = []
        for f in faces:
            score = max((b.score for b in boxes if b.overlap(f.box) > 0.3), default=0.0)
            (kept if score >= FULL_FRAME_MIN_SCORE else doubtful).append(f)
        return kept, doubtful

    def _add_boxes(self, image: np.ndarray, detectors: list[object], found: list[DenseFace]) -> None:
        """Stage 3/4: every new box of ``detectors`` (largest first) goes to the landmarker on upsampled crops; a box
        where it fails is kept as a box-only face. Appends to ``found``."""
        boxes: list[tuple[FaceBox, str]] = []
        for det in detectors:
            for b in det.detect(image, largest_only=False):  # type: ignore[attr-defined]
                boxes.append((b, str(getattr(det, "name", "detector"))))
        boxes.sort(key=lambda bd: -bd[0].area)
        for b, det_name in boxes:
            if any(b.overlap(f.box) > SAME_FACE_OVERLAP for f in found):
                continue
            if b.width < 8 or b.height < 8:
                continue
            dense = self.mesh.run_in_box(image, b)
            if dense is not None and not any(dense.box.overlap(f.box) > SAME_FACE_OVERLAP for f in found):
                found.append(DenseFace(dense.box, dense.points, f"crop:{det_name}", dense.transform))
            elif dense is None:
                found.append(DenseFace(b, None, f"box:{det_name}"))

    def detect(self, image: np.ndarray, largest_only: bool = False) -> list[FaceBox]:
        """Face boxes, dense faces first (largest first), then box-only faces; remembers the dense points."""
        img = np.ascontiguousarray(image)
        faces = self.faces(img, largest_only=largest_only)
        self.memo.image_id = _image_id(img)
        self.memo.faces = {tuple(f.box.to_list()): f for f in faces}
        if not faces:
            h, w = img.shape[:2]
            self.last_reason = (
                f"no face: MediaPipe's landmarker ({w}x{h} frame), dlib HOG (upsampled), OpenCV's frontal and "
                "profile cascades and dlib's CNN detector found none"
            )
        else:
            self.last_reason = ""
        return [f.box for f in faces]

    def remembered(self, image: np.ndarray, box: FaceBox) -> DenseFace | None:
        """The face :meth:`detect` returned for ``box`` in this same image array, if any."""
        if self.memo.image_id != _image_id(np.ascontiguousarray(image)):
            return None
        return self.memo.faces.get(tuple(box.to_list()))


_CHAINS: dict[str, MediaPipeDetector] = {}
_CHAINS_LOCK = threading.Lock()


def shared_chain(task_path: str | os.PathLike[str] | None = None) -> MediaPipeDetector:
    """One :class:`MediaPipeDetector` per bundle and process, shared by ``make_detector("mediapipe")`` and the
    ``mediapipe`` landmark backend so the backend reuses what the detector found."""
    key = str(Path(task_path).resolve()) if task_path is not None else "<default>"
    with _CHAINS_LOCK:
        chain = _CHAINS.get(key)
    if chain is None:
        chain = MediaPipeDetector(shared_face_mesh(task_path))
        with _CHAINS_LOCK:
            chain = _CHAINS.setdefault(key, chain)
    return chain


class ProfileCascadeDetector:
    """OpenCV's Haar cascades: ``haarcascade_profileface.xml`` on the image and its mirror image (the cascade
    knows one side only), then ``haarcascade_frontalface_alt2.xml``; overlapping boxes merged.

    Args:
        min_size: smallest face side in pixels of the detection image.
        max_side: images are downscaled to this longer side for detection; boxes are mapped back.
    """

    name = "opencv_profile"

    def __init__(self, min_size: int = 40, max_side: int = 1024) -> None:
        import cv2

        root = Path(cv2.data.haarcascades)  # type: ignore[attr-defined]
        self._cascades = []
        for fname in ("haarcascade_profileface.xml", "haarcascade_frontalface_alt2.xml"):
            c = cv2.CascadeClassifier(str(root / fname))
            if c.empty():
                raise ValueError(f"{root / fname}: OpenCV could not load the cascade")
            self._cascades.append((fname, c))
        self.min_size = int(min_size)
        self.max_side = int(max_side)
        self.version = f"cv{cv2.__version__}-profile+alt2-min{self.min_size}-m{self.max_side}"

    def detect(self, image: np.ndarray, largest_only: bool = False) -> list[FaceBox]:
        import cv2

        from msma.data.detect import _downscale_for_detection

        small, factor = _downscale_for_detection(np.ascontiguousarray(image), self.max_side)
        gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
        w = gray.shape[1]
        boxes: list[FaceBox] = []
        for fname, cascade in self._cascades:
            flips = (False, True) if "profile" in fname else (False,)
            for flip in flips:
                g = gray[:, ::-1].copy() if flip else gray
                rects, _, weights = cascade.detectMultiScale3(
                    g, scaleFactor=1.1, minNeighbors=4, minSize=(self.min_size, self.min_size), outputRejectLevels=True
                )
                for (x, y, bw, bh), s in zip(np.asarray(rects).reshape(-1, 4), np.asarray(weights).reshape(-1)):
                    left = float(w - x - bw) if flip else float(x)
                    boxes.append(FaceBox(left, float(y), left + bw - 1, float(y + bh - 1), float(s)).scaled(1 / factor))
        boxes.sort(key=lambda b: -b.score)
        merged: list[FaceBox] = []
        for b in boxes:
            if not any(b.overlap(m) > SAME_FACE_OVERLAP for m in merged):
                merged.append(b)
        return merged


class MediaPipeLandmarks(LandmarkBackend):
    """The ``mediapipe`` backend: 68 iBUG points taken from MediaPipe's 478 (:data:`MEDIAPIPE_TO_68`).

    Used with :class:`MediaPipeDetector` (``make_detector("mediapipe")``) it reuses what the chain found; with
    any other detector it runs the landmarker on crops around the given box.

    Args:
        task_path: ``face_landmarker.task`` (default: :func:`find_face_landmarker`).
        detector: the chain whose results to reuse (default: a new chain on the shared landmarker).
    """

    name = "mediapipe"

    def __init__(self, task_path: str | os.PathLike[str] | None = None, detector: MediaPipeDetector | None = None):
        self.mesh = detector.mesh if detector is not None else shared_face_mesh(task_path)
        self.chain = detector if detector is not None else shared_chain(task_path)
        self.version = self.mesh.version

    def thread_copy(self, detector: FaceDetector | None) -> tuple[LandmarkBackend, FaceDetector | None] | None:
        """A backend and chain on a new landmarker (same bundle, settings and cache key) for a labelling thread;
        None unless ``detector`` is a :class:`MediaPipeDetector` (other detectors are copied by processes)."""
        if type(self) is not MediaPipeLandmarks or not isinstance(detector, MediaPipeDetector):
            return None
        chain = MediaPipeDetector(detector.mesh.copy())
        chain.exhaustive = detector.exhaustive
        return MediaPipeLandmarks(detector=chain), chain

    def dense(self, image: np.ndarray, box: FaceBox) -> DenseFace:
        """The dense face in ``box`` (the chain's when it found this box, else the landmarker on crops).

        Raises:
            LandmarkError: the landmarker finds no face in or around the box.
        """
        hit = self.chain.remembered(image, box)
        if hit is not None and hit.points is not None:
            return hit
        dense = self.mesh.run_in_box(np.ascontiguousarray(image), box)
        if dense is None:
            raise LandmarkError(
                "MediaPipe's landmarker found no face landmarks in the detected box "
                f"({box.width:.0f}x{box.height:.0f} px; a profile beyond its range?)"
            )
        return dense

    def detect(self, image: np.ndarray, box: FaceBox, source: Path | None = None) -> np.ndarray:
        lm = self.dense(image, box).landmarks68
        assert lm is not None
        return lm
