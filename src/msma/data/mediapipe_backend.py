"""MediaPipe Face Landmarker (Tasks API): 478 dense landmarks, and a detection chain that misses no face.

:class:`MediaPipeFaceMesh` wraps ``mediapipe.tasks.python.vision.FaceLandmarker`` (IMAGE mode, CPU) and runs it
on a full frame or on a square crop around a face box. The bundle's own detector is BlazeFace *short range*: it
misses faces smaller than about a tenth of the frame and profiles beyond about 60-70 degrees of yaw. The chain
(:class:`MediaPipeDetector`) therefore

1. runs the landmarker on the full frame (every face it finds, largest first);
2. when that finds nothing, runs it on overlapping tiles, coarse to fine (tiles down to 240 px: faces down to
   about 60 px), and refines each face on a crop centred on it;
3. when that finds nothing either (or when all faces are wanted) asks box detectors for candidates: dlib's HOG
   frontal detector with upsampling (small faces), OpenCV's profile cascade on the image and on its mirror image
   (``haarcascade_profileface.xml`` only knows one side) and OpenCV's frontal cascade; overlapping boxes are
   merged;
   and runs the landmarker again on an upsampled square crop around each new box (several margins);
4. keeps boxes where the landmarker still fails (extreme profiles) as *box-only* faces, so a caller can crop
   them for the network; the reason stays with the face.

All coordinates are pixels of the image given (x right, y down, pixel-index units). MediaPipe's normalised
``(x, y, z)`` become ``(x * W - 0.5, y * H - 0.5, z * W)``: z is MediaPipe's relative depth (same scale as x,
smaller = nearer the camera, origin near the head's centre).

:class:`MediaPipeLandmarks` is the ``mediapipe`` 68-point backend (:data:`MEDIAPIPE_TO_68`); it shares the
chain's landmarker and reuses what the chain found for a box instead of running the network twice.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msma.data.detect import FaceBox, FaceDetector
from msma.data.landmarks import LandmarkBackend, LandmarkError
from msma.data.mediapipe_asset import find_face_landmarker
from msma.data.mediapipe_mesh import MEDIAPIPE_TO_68, NUM_DENSE

log = logging.getLogger(__name__)

#: Side of the square crop around a candidate box, in units of the box's larger side, tried in this order.
CROP_MARGINS: tuple[float, ...] = (2.2, 1.6, 3.2)
#: Crops are resized so that their side is at least this many pixels (small faces are upsampled).
CROP_MIN_SIDE = 384
#: Smallest tile of the tiled search (finds faces of about a quarter of it, ~60 px) and the tile size ratio.
TILE_MIN_SIDE = 240
TILE_STEP = 1.4
#: The detector inside ``face_landmarker.task`` (a zip), run alone on the tiles of the small-face search.
BUNDLE_DETECTOR = "face_detector.tflite"
#: Two boxes whose intersection over the smaller box exceeds this are the same face.
SAME_FACE_OVERLAP = 0.5


@dataclass(frozen=True)
class DenseFace:
    """One face found by the chain.

    Attributes:
        box: face box in image pixels (the dense points' bounding box, or the detector's box when box-only).
        points: (478, 3) float32 dense landmarks (x, y in pixels; z relative depth in pixels), or None for a
            box-only face (the landmarker failed on it).
        source: which stage found it: ``"landmarker"`` (full frame), ``"crop:<detector>"`` or
            ``"box:<detector>"`` (box-only).
        transform: (4, 4) MediaPipe's facial transformation matrix (canonical face cm -> MediaPipe's camera
            frame) or None.
    """

    box: FaceBox
    points: np.ndarray | None
    source: str
    transform: np.ndarray | None = None

    @property
    def landmarks68(self) -> np.ndarray | None:
        """(68, 2) float32 iBUG landmarks taken from the dense points, or None for a box-only face."""
        if self.points is None:
            return None
        return np.ascontiguousarray(self.points[list(MEDIAPIPE_TO_68), :2], dtype=np.float32)


def _ignore_stray_sigprof() -> None:
    """Ignores SIGPROF in this process while nothing handles it.

    Seen here (mediapipe 1.2.3, Linux x86-64): once a ``FaceLandmarker`` has run in a process, a later Lightning
    training in the same process (a DataLoader worker forked from it) received SIGPROF, whose default action
    ends the process ("Profiling timer expired"); ``libmediapipe.so`` links a profiler that uses the
    ``ITIMER_PROF`` timer. msma uses no profiling signal, so a stray one is ignored; a profiler that installs its
    own SIGPROF handler (before or after this) keeps it.
    """
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread
    if signal.getsignal(signal.SIGPROF) == signal.SIG_DFL:
        signal.signal(signal.SIGPROF, signal.SIG_IGN)


def _overlap(a: FaceBox, b: FaceBox) -> float:
    iw = max(0.0, min(a.right, b.right) - max(a.left, b.left))
    ih = max(0.0, min(a.bottom, b.bottom) - max(a.top, b.top))
    smaller = min(a.area, b.area)
    return iw * ih / smaller if smaller > 0 else 0.0


class MediaPipeFaceMesh:
    """The Tasks ``FaceLandmarker`` on CPU, IMAGE mode.

    Args:
        task_path: ``face_landmarker.task``; located with :func:`find_face_landmarker` when None.
        num_faces: most faces per run.
        min_confidence: detection and presence thresholds (MediaPipe's defaults are 0.5; lower finds more
            difficult faces, the presence score of the mesh model still rejects non-faces).
    """

    def __init__(
        self, task_path: str | os.PathLike[str] | None = None, num_faces: int = 4, min_confidence: float = 0.3
    ):
        try:
            import mediapipe as mp
            from mediapipe.tasks.python import BaseOptions, vision
        except ImportError as exc:  # pragma: no cover - a declared dependency
            from msma.data.landmarks import LandmarkBackendUnavailable

            raise LandmarkBackendUnavailable(f"the mediapipe package is not installed ({exc})") from exc
        _ignore_stray_sigprof()
        self.path = find_face_landmarker(task_path)
        self._mp = mp
        opts = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(self.path)),
            num_faces=int(num_faces),
            min_face_detection_confidence=float(min_confidence),
            min_face_presence_confidence=float(min_confidence),
            output_facial_transformation_matrixes=True,
        )
        self._landmarker = vision.FaceLandmarker.create_from_options(opts)
        self._num_faces = int(num_faces)
        self._min_confidence = float(min_confidence)
        self._detector: object | None = None  # the bundle's BlazeFace alone, built on first use (tiled search)
        self._detector_missing = False
        self._lock = threading.Lock()
        self.version = f"mp{mp.__version__}-{self.path.stat().st_size}-n{num_faces}-c{min_confidence:g}"
        # MediaPipe closes its graph through a thread pool that Python shuts down *before* ``atexit`` handlers run
        # (its ``__del__`` then fails noisily at exit); threading's own exit hooks run before that shutdown.
        register = getattr(threading, "_register_atexit", None)
        if register is not None:
            register(self.close)
        else:  # pragma: no cover - other Python implementations
            atexit.register(self.close)

    def copy(self) -> MediaPipeFaceMesh:
        """A new landmarker with the same bundle and settings (its own graph: two copies run in parallel threads,
        MediaPipe releases the GIL while a graph runs)."""
        return MediaPipeFaceMesh(self.path, num_faces=self._num_faces, min_confidence=self._min_confidence)

    def close(self) -> None:
        """Releases the MediaPipe graph (also done at interpreter exit)."""
        for attr in ("_landmarker", "_detector"):
            task = getattr(self, attr, None)
            if task is not None:
                setattr(self, attr, None)
                try:
                    task.close()
                except Exception:  # pragma: no cover - shutdown order
                    pass

    def run(self, image: np.ndarray) -> list[DenseFace]:
        """Faces found on the whole (H, W, 3) uint8 RGB image, largest first."""
        if self._landmarker is None:
            raise RuntimeError("MediaPipeFaceMesh is closed")
        img = np.ascontiguousarray(image)
        h, w = img.shape[:2]
        with self._lock:
            res = self._landmarker.detect(self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=img))
        faces = []
        for k, lms in enumerate(res.face_landmarks):
            pts = np.array([[p.x * w - 0.5, p.y * h - 0.5, p.z * w] for p in lms], dtype=np.float32)
            if pts.shape != (NUM_DENSE, 3) or not np.isfinite(pts).all():
                continue
            mats = res.facial_transformation_matrixes
            tr = np.asarray(mats[k], dtype=np.float64) if mats is not None and k < len(mats) else None
            faces.append(DenseFace(FaceBox.from_points(pts[:, :2], 1.0), pts, "landmarker", tr))
        return sorted(faces, key=lambda f: -f.box.area)

    def _face_detector(self) -> object | None:
        """The bundle's own ``face_detector.tflite`` (BlazeFace short range) as a Tasks ``FaceDetector``, or None
        when the bundle has no such member (a user-supplied bundle of another layout)."""
        if self._detector is None and not self._detector_missing:
            import zipfile

            from mediapipe.tasks.python import BaseOptions, vision

            try:
                with zipfile.ZipFile(self.path) as bundle:
                    model = bundle.read(BUNDLE_DETECTOR)
            except (KeyError, zipfile.BadZipFile, OSError) as exc:
                log.info("%s: no %s (%s); the tiled search runs the whole landmarker", self.path, BUNDLE_DETECTOR, exc)
                self._detector_missing = True
                return None
            opts = vision.FaceDetectorOptions(
                base_options=BaseOptions(model_asset_buffer=model), min_detection_confidence=self._min_confidence
            )
            self._detector = vision.FaceDetector.create_from_options(opts)
        return self._detector

    def detect_boxes(self, image: np.ndarray) -> list[FaceBox]:
        """Face boxes of an (H, W, 3) uint8 RGB image from the landmarker's detector alone (no mesh, ~1.5 ms a call
        here against ~10 ms for a full landmarker run that finds a face), largest first, image pixels; the whole
        landmarker's boxes when the bundle has no separate detector. Candidates only: the detector's boxes are
        looser than the mesh's and include some non-faces the mesh's presence score would reject."""
        if self._landmarker is None:
            raise RuntimeError("MediaPipeFaceMesh is closed")
        det = self._face_detector()
        if det is None:
            return [f.box for f in self.run(image)]
        img = np.ascontiguousarray(image)
        with self._lock:
            res = det.detect(self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=img))  # type: ignore[attr-defined]
        boxes = []
        for d in res.detections:
            bb = d.bounding_box
            score = float(d.categories[0].score) if d.categories else 1.0
            x0, y0 = float(bb.origin_x), float(bb.origin_y)
            boxes.append(FaceBox(x0, y0, x0 + float(bb.width), y0 + float(bb.height), score))
        return sorted(boxes, key=lambda b: -b.area)

    def run_in_box(
        self, image: np.ndarray, box: FaceBox, margins: tuple[float, ...] = CROP_MARGINS
    ) -> DenseFace | None:
        """Dense landmarks of the face in ``box``: the landmarker on square crops around it (upsampled).

        Returns:
            The face whose box overlaps ``box`` most (image pixels), or None when no crop gives one.
        """
        import cv2

        h, w = image.shape[:2]
        cx, cy = box.center
        for margin in margins:
            side = max(8.0, margin * max(box.width, box.height))
            out = max(CROP_MIN_SIDE, int(round(side)))
            k = side / out  # image px per crop px
            # crop pixel (u, v) -> image (cx - side/2 + (u + 0.5) k - 0.5, ...)
            m = np.array([[k, 0.0, cx - side / 2 + 0.5 * k - 0.5], [0.0, k, cy - side / 2 + 0.5 * k - 0.5]])
            crop = cv2.warpAffine(
                image, m, (out, out), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT
            )
            found = self.run(crop)
            best, best_ov = None, 0.0
            for f in found:
                assert f.points is not None
                pts = f.points.astype(np.float64)
                xy = pts[:, :2] @ m[:, :2].T + m[:, 2]
                mapped = np.concatenate([xy, pts[:, 2:] * k], axis=1).astype(np.float32)
                cand = FaceBox.from_points(mapped[:, :2], 1.0)
                ov = _overlap(cand, box)
                if ov > best_ov:
                    best, best_ov = DenseFace(cand, mapped, "crop", f.transform), ov
            if best is not None and best_ov > 0.3:
                if best.box.right < 0 or best.box.bottom < 0 or best.box.left > w or best.box.top > h:
                    continue
                return best
        return None

    def run_tiled(self, image: np.ndarray, min_tile: int = TILE_MIN_SIDE) -> list[DenseFace]:
        """Small faces: the landmarker on overlapping square tiles, coarse to fine, stopping at the first tile size
        that finds a face. A face no larger than half a tile lies whole inside some tile (stride = tile / 2); the
        short-range detector finds faces of about a fifth of its input and more, so tiles of ``min_tile`` px reach
        faces of about ``min_tile / 4`` px. The tiles go through the detector alone (:meth:`detect_boxes`); each
        distinct candidate is confirmed and refined by the whole landmarker, :meth:`run_in_box` on a centred crop.

        Returns:
            Faces largest first (image pixels); empty when no tile size finds one.
        """
        h, w = image.shape[:2]
        side = min(h, w) / 2.0
        sizes: list[int] = []
        while side >= min_tile * 0.999:
            sizes.append(int(round(side)))
            side /= TILE_STEP
        if not sizes and min(h, w) > min_tile:
            sizes = [min_tile]
        for t in sizes:
            stride = max(1, t // 2)
            ys = sorted(set(list(range(0, max(1, h - t + 1), stride)) + [max(0, h - t)]))
            xs = sorted(set(list(range(0, max(1, w - t + 1), stride)) + [max(0, w - t)]))
            cands: list[tuple[float, DenseFace]] = []
            for y in ys:
                for x in xs:
                    for b in self.detect_boxes(image[y : y + t, x : x + t]):
                        margin = min(b.left, b.top, t - 1 - b.right, t - 1 - b.bottom)
                        moved = FaceBox(b.left + x, b.top + y, b.right + x, b.bottom + y, b.score)
                        cands.append((margin, DenseFace(moved, None, "tile")))
            if not cands:
                continue
            cands.sort(key=lambda c: -c[0])
            kept: list[DenseFace] = []
            for _, f in cands:
                if not any(_overlap(f.box, k.box) > SAME_FACE_OVERLAP for k in kept):
                    kept.append(f)
            out: list[DenseFace] = []
            for f in kept:
                if any(_overlap(f.box, g.box) > SAME_FACE_OVERLAP for g in out):
                    continue  # a face already confirmed from another candidate
                dense = self.run_in_box(image, f.box)
                if dense is not None and not any(_overlap(dense.box, g.box) > SAME_FACE_OVERLAP for g in out):
                    out.append(DenseFace(dense.box, dense.points, "tiles", dense.transform))
            if out:
                return sorted(out, key=lambda f: -f.box.area)
        return []


_SHARED: dict[str, MediaPipeFaceMesh] = {}
_SHARED_LOCK = threading.Lock()


def shared_face_mesh(task_path: str | os.PathLike[str] | None = None) -> MediaPipeFaceMesh:
    """One :class:`MediaPipeFaceMesh` per bundle path and process (the detector and the backend share it)."""
    key = str(Path(task_path).resolve()) if task_path is not None else "<default>"
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = MediaPipeFaceMesh(task_path)
        return _SHARED[key]


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
        fallbacks: box detectors for stage 2 (default: dlib HOG upsampled, OpenCV profile both sides, OpenCV
            frontal).

    Attributes:
        exhaustive: also run the box detectors when the landmarker found faces (finds small faces beside large
            ones; slower). Off by default: the box detectors run only when the landmarker finds no face.
        last_reason: why the last :meth:`detect` found nothing (empty when it found a face).
    """

    name = "mediapipe_chain"

    def __init__(self, mesh: MediaPipeFaceMesh | None = None, fallbacks: list[object] | None = None) -> None:
        self.mesh = mesh if mesh is not None else shared_face_mesh()
        self._fallbacks = fallbacks
        self.exhaustive = False
        self.memo = _Memo()
        self.version = f"{self.mesh.version}-chain2"  # 2: tiles searched with the detector alone
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

    def faces(self, image: np.ndarray, largest_only: bool = False) -> list[DenseFace]:
        """Every face of an (H, W, 3) uint8 RGB image, largest first (box-only faces after dense ones)."""
        found = self.mesh.run(image)
        if found and (largest_only or not self.exhaustive):
            return found
        for f in self.mesh.run_tiled(image):
            if not any(_overlap(f.box, g.box) > SAME_FACE_OVERLAP for g in found):
                found.append(f)
        if found and (largest_only or not self.exhaustive):
            return sorted(found, key=lambda f: -f.box.area)
        boxes: list[tuple[FaceBox, str]] = []
        for det in self._fallback_detectors():
            for b in det.detect(image, largest_only=False):  # type: ignore[attr-defined]
                boxes.append((b, str(getattr(det, "name", "detector"))))
        boxes.sort(key=lambda bd: -bd[0].area)
        for b, det_name in boxes:
            if any(_overlap(b, f.box) > SAME_FACE_OVERLAP for f in found):
                continue
            if b.width < 8 or b.height < 8:
                continue
            dense = self.mesh.run_in_box(image, b)
            if dense is not None and not any(_overlap(dense.box, f.box) > SAME_FACE_OVERLAP for f in found):
                found.append(DenseFace(dense.box, dense.points, f"crop:{det_name}", dense.transform))
            elif dense is None:
                found.append(DenseFace(b, None, f"box:{det_name}"))
        dense_faces = sorted([f for f in found if f.points is not None], key=lambda f: -f.box.area)
        box_only = sorted([f for f in found if f.points is None], key=lambda f: -f.box.area)
        return dense_faces + box_only

    def detect(self, image: np.ndarray, largest_only: bool = False) -> list[FaceBox]:
        """Face boxes, dense faces first (largest first), then box-only faces; remembers the dense points."""
        img = np.ascontiguousarray(image)
        faces = self.faces(img, largest_only=largest_only)
        self.memo.image_id = _image_id(img)
        self.memo.faces = {tuple(f.box.to_list()): f for f in faces}
        if not faces:
            h, w = img.shape[:2]
            self.last_reason = (
                f"no face: MediaPipe's landmarker ({w}x{h} frame), dlib HOG (upsampled) and OpenCV's frontal and "
                "profile cascades found none"
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


def shared_chain(task_path: str | os.PathLike[str] | None = None) -> MediaPipeDetector:
    """One :class:`MediaPipeDetector` per bundle and process, shared by ``make_detector("mediapipe")`` and the
    ``mediapipe`` landmark backend so the backend reuses what the detector found."""
    key = str(Path(task_path).resolve()) if task_path is not None else "<default>"
    with _SHARED_LOCK:
        chain = _CHAINS.get(key)
    if chain is None:
        chain = MediaPipeDetector(shared_face_mesh(task_path))
        with _SHARED_LOCK:
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
            if not any(_overlap(b, m) > SAME_FACE_OVERLAP for m in merged):
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
