"""The MediaPipe Face Landmarker model bundle ``face_landmarker.task``: find, download, verify.

The ``mediapipe`` wheel (>= 1.2) ships no model files. The bundle (Apache-2.0, Google) is Google's official
``face_landmarker/float16/1`` release: a zip holding ``face_detector.tflite`` (BlazeFace short range),
``face_landmarks_detector.tflite`` (478-point mesh with relative depth), ``face_blendshapes.tflite`` and
``geometry_pipeline_metadata_landmarks.binarypb`` (MediaPipe's canonical face mesh).

Where it comes from, in order (like the ICT archive, :mod:`msma.face_model.assets`):

1. an explicit path (``path=`` / ``--landmark-weights``) or ``$MSMA_FACE_LANDMARKER``, used as given (a
   checksum mismatch is only reported: a user may pass a newer bundle on purpose);
2. ``$MSMA_ASSET_MIRROR/face_landmarker.task`` (offline machines, CI), checksum-verified;
3. ``$MSMA_HOME/downloads/face_landmarker.task`` (a previous download), checksum-verified;
4. the upstream download (checksum-verified, written atomically) when ``allow_download``;
5. otherwise :class:`~msma.utils.pinned.AssetError` naming ``MSMA_ASSET_MIRROR`` and the upstream URL.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from msma.utils import pinned
from msma.utils.files import sha256_file

log = logging.getLogger(__name__)

FACE_LANDMARKER_NAME = "face_landmarker.task"
FACE_LANDMARKER_SIZE = 3_758_596
FACE_LANDMARKER_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
#: Google's model storage, float16 version 1 (the MediaPipe Face Landmarker documentation links this file).
FACE_LANDMARKER_URL = (
    "https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/1/face_landmarker.task"
)
ENV_FACE_LANDMARKER = "MSMA_FACE_LANDMARKER"


def find_face_landmarker(path: str | os.PathLike[str] | None = None, allow_download: bool = True) -> Path:
    """Locates (or downloads) ``face_landmarker.task`` (see the module docstring for the order).

    Args:
        path: explicit bundle file; not checksum-enforced.
        allow_download: try the upstream URL when no verified local copy exists.

    Returns:
        The bundle's path.

    Raises:
        FileNotFoundError: an explicit ``path`` that does not exist.
        AssetError: no verified bundle found or downloadable; the message names ``MSMA_ASSET_MIRROR``, the
            upstream URL and every place tried.
    """
    explicit = path if path is not None else os.environ.get(ENV_FACE_LANDMARKER)
    if explicit:
        given = Path(explicit).expanduser()
        if not given.is_file():
            raise FileNotFoundError(f"{given}: MediaPipe face landmarker bundle not found")
        got = sha256_file(given)
        if got != FACE_LANDMARKER_SHA256:
            log.warning("%s is not the pinned face_landmarker.task (sha256 %s); using it anyway", given, got)
        return given
    return pinned.find_pinned_file(
        FACE_LANDMARKER_NAME,
        FACE_LANDMARKER_SHA256,
        FACE_LANDMARKER_URL,
        f"MediaPipe {FACE_LANDMARKER_NAME} not available. Put the upstream file ({FACE_LANDMARKER_SIZE} bytes, "
        f"sha256 {FACE_LANDMARKER_SHA256}, from {FACE_LANDMARKER_URL}) into a directory and set "
        f"{pinned.ENV_MIRROR} to it, or pass its path (--landmark-weights / ${ENV_FACE_LANDMARKER}).",
        allow_download,
    )
