"""Face detection: dlib's HOG frontal detector (offline, from ``dlib-bin``) or OpenCV's Haar cascade.

Boxes are in pixel coordinates of the image given (x right, y down, pixel-index units).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

log = logging.getLogger(__name__)

FaceSelection = Literal["all", "largest"]


@dataclass(frozen=True)
class FaceBox:
    """An axis-aligned face box.

    Attributes:
        left, top, right, bottom: box edges in pixels (x right, y down, pixel-index units).
        score: detector confidence (detector-specific scale; larger is more confident).
    """

    left: float
    top: float
    right: float
    bottom: float
    score: float = 0.0

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def height(self) -> float:
        return self.bottom - self.top

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def center(self) -> tuple[float, float]:
        return (0.5 * (self.left + self.right), 0.5 * (self.top + self.bottom))

    def overlap(self, other: FaceBox) -> float:
        """Intersection area over the smaller box's area (1 when one box holds the other; 0 for an empty box)."""
        iw = max(0.0, min(self.right, other.right) - max(self.left, other.left))
        ih = max(0.0, min(self.bottom, other.bottom) - max(self.top, other.top))
        smaller = min(self.area, other.area)
        return iw * ih / smaller if smaller > 0 else 0.0

    def scaled(self, factor: float) -> FaceBox:
        """The box in an image resized by ``factor`` (pixel-index convention)."""

        def f(v: float) -> float:
            return (v + 0.5) * factor - 0.5

        return FaceBox(f(self.left), f(self.top), f(self.right), f(self.bottom), self.score)

    def to_list(self) -> list[float]:
        return [self.left, self.top, self.right, self.bottom, self.score]

    @staticmethod
    def from_list(values: list[float]) -> FaceBox:
        if len(values) != 5:
            raise ValueError(f"a face box needs 5 numbers (left, top, right, bottom, score), got {values!r}")
        return FaceBox(*(float(v) for v in values))

    @staticmethod
    def from_points(points: np.ndarray, score: float = 1.0) -> FaceBox:
        """The bounding box of (K, 2) points (NaN ignored)."""
        pts = np.asarray(points, dtype=np.float64)
        return FaceBox(
            float(np.nanmin(pts[:, 0])),
            float(np.nanmin(pts[:, 1])),
            float(np.nanmax(pts[:, 0])),
            float(np.nanmax(pts[:, 1])),
            score,
        )


class FaceDetector(Protocol):
    """Finds faces in an (H, W, 3) uint8 RGB image."""

    name: str
    version: str

    def detect(self, image: np.ndarray, largest_only: bool = False) -> list[FaceBox]:
        """Returns the face boxes, most confident first.

        ``largest_only`` lets a detector skip work that only finds small faces when the caller keeps the
        largest face anyway (it may then return fewer boxes than a full search).
        """
        ...


def _downscale_for_detection(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image, 1.0
    import cv2

    factor = max_side / float(max(h, w))
    small = cv2.resize(image, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)
    return small, small.shape[1] / float(w)


class DlibHogDetector:
    """dlib's HOG + linear SVM frontal face detector (``dlib.get_frontal_face_detector``; no weights file).

    Args:
        upsample: number of 2x upsamplings dlib applies to find small faces.
        threshold: detection score threshold (dlib's ``adjust_threshold``; 0 is dlib's default).
        max_side: images are downscaled to this longer side for detection (speed); boxes are mapped back.
    """

    name = "dlib_hog"

    def __init__(self, upsample: int = 1, threshold: float = 0.0, max_side: int = 1024) -> None:
        import dlib

        self._detector = dlib.get_frontal_face_detector()
        self.upsample = int(upsample)
        self.threshold = float(threshold)
        self.max_side = int(max_side)
        # "-u0": all-faces searches also keep the boxes found without upsampling (label caches store all faces)
        self.version = f"dlib{dlib.__version__}-up{self.upsample}-t{self.threshold:g}-m{self.max_side}-u0"

    def detect(self, image: np.ndarray, largest_only: bool = False) -> list[FaceBox]:
        """Face boxes, most confident first.

        The image is first searched without upsampling (dlib's HOG window finds faces of about 80 px and more
        there, at a quarter of the cost). With ``largest_only`` the search repeats with ``upsample`` only when that
        finds nothing, so the largest face is the same as a full search would give for any face big enough to be
        found without upsampling. Otherwise both searches' boxes are kept (a box of the first that overlaps one of
        the upsampled search by more than half is the same face): the upsampled search alone can score a face
        found at the original size below the threshold (``faces68/einstein.jpg``: 0.07 without upsampling, below
        0 with it), and that face would be lost.
        """
        small, factor = _downscale_for_detection(_check_uint8(image), self.max_side)
        first: list[FaceBox] = []
        if self.upsample > 0:
            rects, scores, _ = self._detector.run(small, 0, self.threshold)
            first = [_dlib_box(r, s, factor) for r, s in zip(rects, scores)]
            if largest_only and first:
                return sorted(first, key=lambda b: -b.score)
        rects, scores, _ = self._detector.run(small, self.upsample, self.threshold)
        boxes = [_dlib_box(r, s, factor) for r, s in zip(rects, scores)]
        for b in first:
            if not any(b.overlap(k) > 0.5 for k in boxes):
                boxes.append(b)
        return sorted(boxes, key=lambda b: -b.score)


def _dlib_box(rect: Any, score: float, factor: float) -> FaceBox:
    """A dlib rectangle of an image resized by ``factor`` as a :class:`FaceBox` of the original image."""
    return FaceBox(
        float(rect.left()), float(rect.top()), float(rect.right()), float(rect.bottom()), float(score)
    ).scaled(1.0 / factor)


class DlibCnnDetector:
    """dlib's CNN face detector (max-margin object detection, ``mmod_human_face_detector.dat`` from the
    ``face-recognition-models`` package or Debian's ``libdlib-data``; no download).

    It finds faces over a wider range of poses than the HOG detector (turned profiles among them) but costs about
    1-3 s on a 450 px image on a 2-core CPU, so the detection chain runs it last, only when every other stage
    found nothing.

    Args:
        path: the model file (default: :func:`msma.data.landmarks.find_dlib_file`, ``$MSMA_DLIB_CNN_DETECTOR``).
        max_side: images are downscaled to this longer side for detection (the network's window finds faces of
            about 80 px and more, so faces above a sixth of the longer side); boxes are mapped back.
        upsample: number of 2x upsamplings dlib applies before detection.

    Raises:
        LandmarkBackendUnavailable: the model file is nowhere to be found (the message lists where it looked).
    """

    name = "dlib_cnn"
    #: Shorter side (pixels, after downscaling and upsampling) below which no detection is tried.
    MIN_SIDE = 40

    def __init__(self, path: str | Path | None = None, max_side: int = 480, upsample: int = 0) -> None:
        import dlib

        from msma.data.landmarks import DLIB_CNN_DETECTOR_NAME, find_dlib_file

        model = find_dlib_file(DLIB_CNN_DETECTOR_NAME, "MSMA_DLIB_CNN_DETECTOR", path)
        self._detector = dlib.cnn_face_detection_model_v1(str(model))
        self.max_side = int(max_side)
        self.upsample = int(upsample)
        self.version = f"dlib{dlib.__version__}-mmod-up{self.upsample}-m{self.max_side}"

    def detect(self, image: np.ndarray, largest_only: bool = False) -> list[FaceBox]:
        """Face boxes in ``image`` pixels, most confident first (``largest_only`` changes nothing here).

        An image whose shorter side, as the network sees it, is below :attr:`MIN_SIDE` holds no face it can find
        (its window is about 80 px) and gets none: dlib's network aborts with a ``RuntimeError`` below about 8 px
        (a 5000 x 40 px strip downscaled for detection, say).
        """
        small, factor = _downscale_for_detection(_check_uint8(image), self.max_side)
        if min(small.shape[:2]) * 2**self.upsample < self.MIN_SIDE:
            return []
        found = self._detector(np.ascontiguousarray(small), self.upsample)
        boxes = [_dlib_box(d.rect, d.confidence, factor) for d in found]
        return sorted(boxes, key=lambda b: -b.score)


class OpenCVHaarDetector:
    """OpenCV's frontal-face Haar cascade (``cv2.data.haarcascades``; ships with opencv-python).

    Args:
        cascade: cascade file name inside ``cv2.data.haarcascades`` or a path.
        min_size: smallest face side in pixels (of the detection image).
        max_side: images are downscaled to this longer side for detection; boxes are mapped back.
    """

    name = "opencv_haar"

    def __init__(
        self, cascade: str = "haarcascade_frontalface_default.xml", min_size: int = 24, max_side: int = 1024
    ) -> None:
        import cv2

        path = Path(cascade)
        if not path.is_file():
            path = Path(cv2.data.haarcascades) / cascade  # type: ignore[attr-defined]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: OpenCV Haar cascade not found")
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise ValueError(f"{path}: OpenCV could not load the cascade")
        self.min_size = int(min_size)
        self.max_side = int(max_side)
        self.version = f"cv{cv2.__version__}-{path.name}-min{self.min_size}-m{self.max_side}"

    def detect(self, image: np.ndarray, largest_only: bool = False) -> list[FaceBox]:
        import cv2

        small, factor = _downscale_for_detection(_check_uint8(image), self.max_side)
        gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        rects, _, weights = self._cascade.detectMultiScale3(
            gray, scaleFactor=1.1, minNeighbors=5, minSize=(self.min_size, self.min_size), outputRejectLevels=True
        )
        boxes = [
            FaceBox(float(x), float(y), float(x + w - 1), float(y + h - 1), float(s)).scaled(1.0 / factor)
            for (x, y, w, h), s in zip(np.asarray(rects).reshape(-1, 4), np.asarray(weights).reshape(-1))
        ]
        return sorted(boxes, key=lambda b: -b.score)


class FallbackDetector:
    """Tries detectors in order and returns the first non-empty result."""

    def __init__(self, detectors: list[FaceDetector]) -> None:
        if not detectors:
            raise ValueError("FallbackDetector needs at least one detector")
        self.detectors = detectors
        self.name = "+".join(d.name for d in detectors)
        self.version = "+".join(d.version for d in detectors)

    def detect(self, image: np.ndarray, largest_only: bool = False) -> list[FaceBox]:
        for detector in self.detectors:
            boxes = detector.detect(image, largest_only=largest_only)
            if boxes:
                return boxes
        return []


def _check_uint8(image: np.ndarray) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"detectors take (H, W, 3) uint8 RGB images, got {image.shape} {image.dtype}")
    return np.ascontiguousarray(image)


def make_detector(name: str = "dlib") -> FaceDetector:
    """Builds a detector by name: ``"dlib"`` (HOG), ``"opencv"`` (Haar), ``"dlib+opencv"`` (fallback) or
    ``"mediapipe"`` (the chain of :mod:`msma.data.mediapipe_backend`: landmarker, then HOG / profile cascades)."""
    parts = [p.strip() for p in name.split("+") if p.strip()]
    built: list[FaceDetector] = []
    for part in parts:
        if part in ("dlib", "dlib_hog", "hog"):
            built.append(DlibHogDetector())
        elif part in ("opencv", "haar", "opencv_haar"):
            built.append(OpenCVHaarDetector())
        elif part in ("mediapipe", "mediapipe_chain"):
            from msma.data.mediapipe_backend import shared_chain

            built.append(shared_chain())
        else:
            raise ValueError(f"unknown face detector {part!r}; use 'dlib', 'opencv', 'dlib+opencv' or 'mediapipe'")
    if not built:
        raise ValueError(f"no face detector named in {name!r}")
    return built[0] if len(built) == 1 else FallbackDetector(built)


def select_faces(boxes: list[FaceBox], mode: FaceSelection = "largest") -> list[FaceBox]:
    """``"largest"``: the one box with the largest area (empty list stays empty); ``"all"``: every box."""
    if mode == "all":
        return list(boxes)
    if mode == "largest":
        return [max(boxes, key=lambda b: b.area)] if boxes else []
    raise ValueError(f"face selection must be 'all' or 'largest', got {mode!r}")


def detect_faces(detector: FaceDetector, image: np.ndarray, all_faces: bool) -> list[FaceBox]:
    """Face boxes of ``detector`` on an (H, W, 3) uint8 RGB image: every face (largest first) or the largest one.

    The MediaPipe chain (:mod:`msma.data.mediapipe_backend`) is asked for every stage's faces when ``all_faces``
    and for its first stage's otherwise; it lists faces with landmarks before box-only ones, so its "largest" is
    its first face (a landmarked face is preferred over a larger box-only one).
    """
    if hasattr(detector, "exhaustive"):
        detector.exhaustive = all_faces
    found = detector.detect(image, largest_only=not all_faces)
    if getattr(detector, "remembered", None) is not None and not all_faces and found:
        return list(found[:1])
    return sorted(select_faces(found, "all" if all_faces else "largest"), key=lambda b: -b.area)
