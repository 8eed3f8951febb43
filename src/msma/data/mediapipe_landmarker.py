"""MediaPipe's Face Landmarker (Tasks API) on CPU: one landmarker, its runs on a frame, on crops and on tiles.

:class:`MediaPipeFaceMesh` wraps ``mediapipe.tasks.python.vision.FaceLandmarker`` (IMAGE mode, CPU): 478 dense points
with relative depth on a full frame (:meth:`~MediaPipeFaceMesh.run`), on upsampled square crops around a box
(:meth:`~MediaPipeFaceMesh.run_in_box`) and on overlapping tiles for small faces
(:meth:`~MediaPipeFaceMesh.run_tiled`, candidates from the bundle's detector alone,
:meth:`~MediaPipeFaceMesh.detect_boxes`). The detection chain and the ``mediapipe`` landmark backend built on it
are in :mod:`msma.data.mediapipe_backend`.

All coordinates are pixels of the image given (x right, y down, pixel-index units). MediaPipe's normalised
``(x, y, z)`` become ``(x * W - 0.5, y * H - 0.5, z * W)``: z is MediaPipe's relative depth (same scale as x,
smaller = nearer the camera, origin near the head's centre).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msma.data.detect import FaceBox
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
#: Least detector score of a *small* tile candidate: one whose box side is below ``TILE_LARGE_FRACTION`` of the
#: image's shorter side. The tiled search runs the detector on tens to hundreds of windows, so at the full-frame
#: threshold (0.3) a photo without a face often yields a confirmed candidate somewhere (random noise, skimage's
#: ``coffee`` and ``hubble_deep_field``), and a false candidate at a coarse tile size ends the search before the
#: tile size of the real small face; such candidates need MediaPipe's own default threshold, 0.5. A large candidate
#: (a face the full-frame pass missed, mostly a turned one) keeps the landmarker's threshold.
TILE_SMALL_MIN_SCORE = 0.5
TILE_LARGE_FRACTION = 0.25
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
        self._owner_pid = os.getpid()
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
        """Releases the MediaPipe graph (also done at interpreter exit, by the process that created it).

        A forked copy (a loader or synthetic-generation worker started after the landmarker was made) inherits
        the exit hook but not MediaPipe's dispatcher threads: closing, or dropping the task, would wait on them
        forever, so a forked copy leaves the graph to the process that owns it.
        """
        if os.getpid() != self._owner_pid:
            return
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
                ov = cand.overlap(box)
                if ov > best_ov:
                    best, best_ov = DenseFace(cand, mapped, "crop", f.transform), ov
            if best is not None and best_ov > 0.3:
                if best.box.right < 0 or best.box.bottom < 0 or best.box.left > w or best.box.top > h:
                    continue
                return best
        return None

    def run_tiled(
        self, image: np.ndarray, min_tile: int = TILE_MIN_SIDE, doubtful: Sequence[FaceBox] = ()
    ) -> list[DenseFace]:
        """Small faces: the landmarker on overlapping square tiles, coarse to fine, stopping at the first tile size
        that finds a face. A face no larger than half a tile lies whole inside some tile (stride = tile / 2); the
        short-range detector finds faces of about a fifth of its input and more, so tiles of ``min_tile`` px reach
        faces of about ``min_tile / 4`` px. The tiles go through the detector alone (:meth:`detect_boxes`); each
        distinct candidate is confirmed and refined by the whole landmarker, :meth:`run_in_box` on a centred crop.

        Small candidates (a side below ``TILE_LARGE_FRACTION`` of the image's shorter side) need a detector score of
        :data:`TILE_SMALL_MIN_SCORE`; so do candidates over a ``doubtful`` box (a face the full-frame pass found but
        its detector scored low: the tiles look for faces it missed, not for a second chance of those it doubted).

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
                        moved = FaceBox(b.left + x, b.top + y, b.right + x, b.bottom + y, b.score)
                        strict = max(b.width, b.height) < TILE_LARGE_FRACTION * min(h, w) or any(
                            moved.overlap(d) > 0.3 for d in doubtful
                        )
                        if strict and b.score < TILE_SMALL_MIN_SCORE:
                            continue
                        margin = min(b.left, b.top, t - 1 - b.right, t - 1 - b.bottom)
                        cands.append((margin, DenseFace(moved, None, "tile")))
            if not cands:
                continue
            cands.sort(key=lambda c: -c[0])
            kept: list[DenseFace] = []
            for _, f in cands:
                if not any(f.box.overlap(k.box) > SAME_FACE_OVERLAP for k in kept):
                    kept.append(f)
            out: list[DenseFace] = []
            for f in kept:
                if any(f.box.overlap(g.box) > SAME_FACE_OVERLAP for g in out):
                    continue  # a face already confirmed from another candidate
                dense = self.run_in_box(image, f.box)
                if dense is not None and not any(dense.box.overlap(g.box) > SAME_FACE_OVERLAP for g in out):
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
