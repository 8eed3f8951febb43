"""Fitted coefficients as pseudo-labels: the ``mediapipe+fit`` landmark backend of ``msma prepare --fit``.

It is the ``mediapipe`` backend (:class:`~msma.data.mediapipe_backend.MediaPipeLandmarks`) that also fits the
face model to each face (:func:`~msma.fitting.photo.fit_photo_face`: from the mean face posed by PnP, in a
square crop around the dense landmarks), and returns
the coefficients with that crop's frame, so the label cache (:mod:`msma.data.cache`) stores them next to the
landmarks. The cache key holds the face model's fingerprint and the fit settings: another model or recipe never
reads these coefficients.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict
from typing import Any

import numpy as np

from msma.data.mediapipe_backend import DenseFace, MediaPipeLandmarks
from msma.fitting.fitter import FitConfig
from msma.fitting.photo import FIT_SIZE


class MediaPipeFitLandmarks(MediaPipeLandmarks):
    """``mediapipe`` landmarks plus fitted coefficients per face.

    Args:
        task_path: ``face_landmarker.task`` (default: located as usual).
        face_model: ``"ict"`` or ``"bfm"`` (:func:`msma.face_model.load_face_model`).
        config: fitting settings.
        renderer_backend: renderer of the photometric term (``"torch"`` on CPU).
    """

    name = "mediapipe_fit"

    def __init__(
        self,
        task_path: str | os.PathLike[str] | None = None,
        face_model: str = "ict",
        config: FitConfig | None = None,
        renderer_backend: str = "auto",
    ) -> None:
        super().__init__(task_path)
        from msma.face_model import load_face_model
        from msma.fitting.correspondence import load_correspondence
        from msma.render.renderer import MeshRenderer

        self.model = load_face_model(face_model)
        self.corr = load_correspondence(self.model, task_path)
        self.renderer = MeshRenderer(backend=renderer_backend)
        self.config = config or FitConfig()
        cfg_tag = hashlib.sha256(repr(sorted(asdict(self.config).items())).encode()).hexdigest()[:8]
        self.model_tag = f"{self.model.name}-{self.model.fingerprint()}"
        self.version = f"{self.mesh.version}-fit-{self.model_tag}-{cfg_tag}"

    def fit_face(self, image: np.ndarray, face: DenseFace, to_orig: np.ndarray) -> dict[str, Any] | None:
        """Fits one face; returns the JSON-ready pseudo-label (see :class:`msma.data.cache.FaceLabel`).

        Args:
            image: (H, W, 3) uint8 loaded image (the one the landmarks were found in).
            face: its dense face (loaded pixels).
            to_orig: (3, 3) loaded -> original pixels.
        """
        from msma.fitting.photo import fit_photo_face

        if face.points is None:
            return None
        fitted = fit_photo_face(self.model, self.corr, image, face.points, self.renderer, self.config)
        res = fitted.result
        crop_to_image = to_orig @ fitted.crop_to_image
        lm = fitted.landmarks_68 @ to_orig[:2, :2].T + to_orig[:2, 2]
        return {
            "coefficients": {g: [round(float(v), 6) for v in t[0].tolist()] for g, t in res.params.items()},
            "crop_to_image": np.round(crop_to_image, 6).tolist(),
            "image_size": FIT_SIZE,
            "frame": "square crop centred on the dense landmarks' box, side 1.5 x its larger side",
            "face_model": self.model_tag,
            "landmarks_2d": np.round(lm, 3).tolist(),
            "dense_error_px": round(float(res.dense_error[0]), 4),
        }
