"""On-disk landmark pseudo-label cache, one JSON file per (image content, labeller).

Layout under a cache directory (one per dataset by default)::

    <cache>/<labeller key>/<sha[:2]>/<sha256 of the image bytes>.json   one entry per image
    <cache>/paths.json                                                   path -> (size, mtime, sha) index

* Keyed by the image's content hash and the labeller key (landmark backend name/version + detector
  name/version), so renamed or copied files reuse labels and a new model never reads old labels.
* Every detected face is stored (box + 68 landmarks, original-image pixels); "largest only" is chosen when
  the dataset is built, so the cache does not depend on that option. Images without a usable face store the
  skip reason instead, so reruns do not retry them.
* Writes are atomic (temporary file in the same directory, fsync, ``os.replace``): an interrupted run leaves
  either a complete entry or none, never a partial or duplicate one; a rerun skips finished images.
* Each entry carries a format version, its key and a SHA-256 checksum of its payload: a corrupt, truncated,
  foreign or stale entry is detected on read, logged and recomputed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from msma.data.detect import FaceBox, FaceDetector, select_faces
from msma.data.io import BadImageError, load_image
from msma.data.landmarks import LandmarkBackend, LandmarkError
from msma.utils.files import atomic_write_text, sha256_file

log = logging.getLogger(__name__)

#: Version of the entry layout; entries with another version are stale and recomputed.
CACHE_FORMAT = 1

REASON_NO_FACE = "no_face"
REASON_LANDMARKS_OUTSIDE = "landmarks_outside"
REASON_LANDMARK_ERROR = "landmark_error"
REASON_DETECTOR = "detector_failed"

#: Skip reasons that describe a failure of the labelling run rather than the image: not cached, so the next run
#: (another library version, more memory) labels the image again instead of skipping it for good.
UNCACHED_REASONS = frozenset({REASON_DETECTOR})

#: A face is dropped when more than this fraction of its 68 landmarks fall outside the image.
MAX_OUTSIDE_FRACTION = 0.1


@dataclass(frozen=True)
class FaceLabel:
    """One face's pseudo-labels.

    Attributes:
        box: detector box, original-image pixels.
        landmarks: (68, 2) float32 landmarks, original-image pixels (x right, y down, pixel-index units).
        dense: (478, 3) float32 MediaPipe points (original-image pixels; z relative depth in pixels) for the
            ``mediapipe`` backend, else None.
        fit: fitted face-model coefficients (``mediapipe`` backend with ``--fit``): a JSON-ready dict with
            ``coefficients`` ({group: list}), ``crop_to_image`` (3x3, fit-frame pixels -> original pixels),
            ``image_size``, ``face_model`` (name-fingerprint), ``landmarks_2d`` (68 projected, original pixels)
            and ``dense_error_px``; else None.
    """

    box: FaceBox
    landmarks: np.ndarray
    dense: np.ndarray | None = None
    fit: dict[str, Any] | None = None


@dataclass(frozen=True)
class ImageLabels:
    """Pseudo-labels of one image (or why it has none).

    Attributes:
        sha256: hex SHA-256 of the image file's bytes.
        key: labeller key (landmark backend + detector).
        faces: detected faces, largest first; empty when skipped.
        skip_reason: None when usable, else a reason code (``"no_face"``, ``"truncated"``, ...).
        detail: human-readable detail for a skip.
        image_size: (height, width) of the original (upright) image; (0, 0) when it could not be decoded.
    """

    sha256: str
    key: str
    faces: tuple[FaceLabel, ...]
    skip_reason: str | None = None
    detail: str = ""
    image_size: tuple[int, int] = (0, 0)

    @property
    def ok(self) -> bool:
        return self.skip_reason is None and len(self.faces) > 0

    def select(self, mode: Literal["all", "largest"]) -> tuple[FaceLabel, ...]:
        """The faces to use: all, or the one with the largest box."""
        if mode == "all" or not self.faces:
            return self.faces
        if mode == "largest":
            return (max(self.faces, key=lambda f: f.box.area),)
        raise ValueError(f"face selection must be 'all' or 'largest', got {mode!r}")

    def payload(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "key": self.key,
            "skip_reason": self.skip_reason,
            "detail": self.detail,
            "image_size": list(self.image_size),
            "faces": [_face_payload(f) for f in self.faces],
        }

    @staticmethod
    def from_payload(data: dict[str, Any]) -> ImageLabels:
        faces = []
        for f in data["faces"]:
            lm = np.asarray(f["landmarks"], dtype=np.float32)
            if lm.shape != (68, 2):
                raise ValueError(f"landmarks of shape {lm.shape}, expected (68, 2)")
            dense = None
            if f.get("dense") is not None:
                dense = np.asarray(f["dense"], dtype=np.float32)
                if dense.ndim != 2 or dense.shape[1] != 3:
                    raise ValueError(f"dense landmarks of shape {dense.shape}, expected (K, 3)")
            fit = f.get("fit")
            if fit is not None and not isinstance(fit, dict):
                raise ValueError("fit entry is not an object")
            faces.append(FaceLabel(box=FaceBox.from_list(f["box"]), landmarks=lm, dense=dense, fit=fit))
        h, w = (int(v) for v in data["image_size"])
        return ImageLabels(
            sha256=str(data["sha256"]),
            key=str(data["key"]),
            faces=tuple(faces),
            skip_reason=data["skip_reason"],
            detail=str(data.get("detail", "")),
            image_size=(h, w),
        )


def _face_payload(f: FaceLabel) -> dict[str, Any]:
    out: dict[str, Any] = {
        "box": f.box.to_list(),
        "landmarks": np.asarray(f.landmarks, dtype=np.float64).round(3).tolist(),
    }
    if f.dense is not None:
        out["dense"] = np.asarray(f.dense, dtype=np.float64).round(2).tolist()
    if f.fit is not None:
        out["fit"] = f.fit
    return out


def _checksum(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def labeller_key(backend: LandmarkBackend, detector: FaceDetector | None) -> str:
    """The cache key of a (landmark backend, detector) pair, safe as a folder name."""
    key = (
        backend.key
        if detector is None or not backend.needs_detector
        else f"{backend.key}__{detector.name}-{detector.version}"
    )
    return re.sub(r"[^A-Za-z0-9._+-]", "_", key)


class LabelCache:
    """Pseudo-label entries of one labeller under ``root``.

    Args:
        root: the dataset's cache directory.
        key: labeller key (:func:`labeller_key`).
    """

    def __init__(self, root: str | os.PathLike[str], key: str) -> None:
        self.root = Path(root)
        self.key = key
        self.dir = self.root / key
        #: entries found corrupt or stale since this object was made.
        self.invalid = 0

    def path_for(self, sha256: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
        return self.dir / sha256[:2] / f"{sha256}.json"

    def get(self, sha256: str) -> ImageLabels | None:
        """The entry for an image hash, or None when missing, corrupt or stale (then it is logged)."""
        path = self.path_for(sha256)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("%s: unreadable cache entry (%s); recomputing", path, exc)
            self.invalid += 1
            return None
        try:
            doc = json.loads(raw.decode("utf-8"))
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            if doc.get("format") != CACHE_FORMAT:
                raise ValueError(f"format {doc.get('format')!r}, expected {CACHE_FORMAT}")
            payload = doc["payload"]
            if doc.get("checksum") != _checksum(payload):
                raise ValueError("checksum mismatch")
            if payload.get("key") != self.key or payload.get("sha256") != sha256:
                raise ValueError("entry belongs to another image or labeller")
            return ImageLabels.from_payload(payload)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("%s: corrupt or stale cache entry (%s); recomputing", path, exc)
            self.invalid += 1
            return None

    def put(self, labels: ImageLabels) -> Path:
        """Stores an entry atomically (replacing any previous one); returns its path."""
        if labels.key != self.key:
            raise ValueError(f"labels for key {labels.key!r} put into cache {self.key!r}")
        payload = labels.payload()
        doc = {"format": CACHE_FORMAT, "checksum": _checksum(payload), "payload": payload}
        path = self.path_for(labels.sha256)
        atomic_write_text(path, json.dumps(doc))
        return path

    def entries(self) -> Iterator[Path]:
        """Paths of all (complete) entries."""
        if self.dir.is_dir():
            yield from sorted(self.dir.glob("??/*.json"))

    def clean_temporaries(self) -> int:
        """Removes temporary files left by an interrupted writer; returns how many."""
        n = 0
        if self.dir.is_dir():
            for tmp in self.dir.glob("??/.tmp-*.part"):
                with contextlib.suppress(OSError):
                    tmp.unlink()
                    n += 1
        return n


class PathIndex:
    """Remembers each file's content hash by (path, size, mtime) so reruns do not re-read every photo.

    Args:
        path: the JSON index file (``<cache>/paths.json``).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._entries: dict[str, tuple[int, int, str]] = {}
        self._dirty = False
        try:
            data = json.loads(self.path.read_text())
            for k, v in data.get("files", {}).items():
                self._entries[str(k)] = (int(v[0]), int(v[1]), str(v[2]))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, IndexError, AttributeError) as exc:
            log.warning("%s: unreadable path index (%s); rehashing files", self.path, exc)

    def sha256(self, file: Path) -> str:
        """The file's SHA-256, from the index when size and mtime match, else computed (and remembered).

        Raises:
            OSError: the file cannot be read.
        """
        st = file.stat()
        name = str(file.resolve())
        hit = self._entries.get(name)
        if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        digest = sha256_file(file)
        self._entries[name] = (st.st_size, st.st_mtime_ns, digest)
        self._dirty = True
        return digest

    def save(self) -> None:
        """Writes the index atomically (no-op when unchanged)."""
        if self._dirty:
            atomic_write_text(self.path, json.dumps({"format": 1, "files": self._entries}))
            self._dirty = False


def _outside_fraction(landmarks: np.ndarray, height: int, width: int) -> float:
    x, y = landmarks[:, 0], landmarks[:, 1]
    inside = (x >= -0.5) & (x <= width - 0.5) & (y >= -0.5) & (y <= height - 0.5) & np.isfinite(landmarks).all(1)
    return float(1.0 - inside.mean())


def label_image(
    path: str | os.PathLike[str],
    sha256: str,
    backend: LandmarkBackend,
    detector: FaceDetector | None,
    key: str,
    max_outside: float = MAX_OUTSIDE_FRACTION,
) -> ImageLabels:
    """Detects every face of a photo and its 68 landmarks. Never raises for a bad photo: returns a skip.

    Args:
        path: image file.
        sha256: its content hash.
        backend: landmark backend.
        detector: face detector (unused by backends that supply faces themselves, e.g. ``gt``).
        key: labeller key stored in the entry.
        max_outside: faces with a larger fraction of landmarks outside the image are dropped.

    Returns:
        The labels, faces largest first, in original-image pixels.
    """
    p = Path(path)
    try:
        loaded = load_image(p)
    except BadImageError as exc:
        log.info("skip %s", exc)
        return ImageLabels(sha256, key, (), exc.reason, exc.detail)
    image = loaded.as_uint8()
    to_orig = loaded.loaded_to_original()
    size = loaded.original_size
    try:
        given = backend.faces(image, p)
        if given is not None:
            # Dataset landmarks are in original-image pixels already.
            faces = [FaceLabel(FaceBox.from_points(lm), np.asarray(lm, dtype=np.float32)) for lm in given]
        else:
            if detector is None:
                raise ValueError(f"landmark backend {backend.name!r} needs a face detector")
            try:
                boxes = select_faces(detector.detect(image), "all")
            except RuntimeError as exc:  # a detector library aborting on one odd image: skip it, keep the run
                log.warning("skip %s: the face detector failed: %s", p, exc)
                return ImageLabels(sha256, key, (), REASON_DETECTOR, str(exc).strip()[:300], size)
            faces = []
            errors: list[LandmarkError] = []
            dense_fn = getattr(backend, "dense", None)
            for box in boxes:
                try:
                    if dense_fn is not None:
                        faces.append(_dense_label(backend, dense_fn(image, box), image, to_orig, loaded.scale))
                        continue
                    lm = backend.detect(image, box, p).astype(np.float64)
                except LandmarkError as exc:
                    errors.append(exc)  # one face without landmarks (e.g. an extreme profile); others may do
                    continue
                lm = lm @ to_orig[:2, :2].T + to_orig[:2, 2]
                faces.append(FaceLabel(box.scaled(1.0 / loaded.scale), lm.astype(np.float32)))
            if not faces and errors:
                raise errors[0]
    except LandmarkError as exc:
        log.info("skip %s: %s", p, exc)
        return ImageLabels(sha256, key, (), REASON_LANDMARK_ERROR, str(exc), size)
    if not faces:
        log.info("skip %s: no face found", p)
        return ImageLabels(sha256, key, (), REASON_NO_FACE, "the detector found no face", size)
    kept = [f for f in faces if _outside_fraction(f.landmarks, size[0], size[1]) <= max_outside]
    if not kept:
        log.info("skip %s: landmarks outside the image", p)
        return ImageLabels(
            sha256, key, (), REASON_LANDMARKS_OUTSIDE, f"more than {max_outside:.0%} of the landmarks outside", size
        )
    kept.sort(key=lambda f: -f.box.area)
    return ImageLabels(sha256, key, tuple(kept), None, "", size)


def _dense_label(
    backend: LandmarkBackend, dense_face: Any, image: np.ndarray, to_orig: np.ndarray, scale: float
) -> FaceLabel:
    """A face of the ``mediapipe`` backend: 68 + dense points in original pixels, and the fit when it fits."""
    pts = np.asarray(dense_face.points, dtype=np.float64)
    xy = pts[:, :2] @ to_orig[:2, :2].T + to_orig[:2, 2]
    z = pts[:, 2:] * float(np.sqrt(abs(np.linalg.det(to_orig[:2, :2]))))
    dense = np.concatenate([xy, z], axis=1).astype(np.float32)
    lm = np.asarray(dense_face.landmarks68, dtype=np.float64) @ to_orig[:2, :2].T + to_orig[:2, 2]
    fit_fn = getattr(backend, "fit_face", None)
    fit = fit_fn(image, dense_face, to_orig) if fit_fn is not None else None
    return FaceLabel(dense_face.box.scaled(1.0 / scale), lm.astype(np.float32), dense, fit)


Status = Literal["cached", "computed"]


def cached_labels(
    path: str | os.PathLike[str],
    sha256: str,
    cache: LabelCache,
    backend: LandmarkBackend,
    detector: FaceDetector | None,
) -> tuple[ImageLabels, Status]:
    """The cache entry of an image, computing and storing it when missing/invalid.

    An image skipped for a reason of :data:`UNCACHED_REASONS` (its detector aborted) is returned but not stored.
    """
    hit = cache.get(sha256)
    if hit is not None:
        return hit, "cached"
    labels = label_image(path, sha256, backend, detector, cache.key)
    if labels.skip_reason in UNCACHED_REASONS:
        return labels, "computed"
    cache.put(labels)
    # Return exactly what a later read returns (stored precision), so cached and fresh runs agree.
    return ImageLabels.from_payload(labels.payload()), "computed"
