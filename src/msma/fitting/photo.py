"""Fitting one photo's face from its dense landmarks alone, in a square crop around them (no network).

What ``msma prepare --fit`` stores and what tests and benchmarks compare: the fit frame is a ``size`` px square
centred on the dense landmarks' box, side ``enlarge`` x its larger side; the start is ``init`` (default the mean
face, posed by the fitter's PnP stage).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from msma.face_model.model import FaceModel
from msma.face_model.params import FaceParams
from msma.fitting.correspondence import DenseCorrespondence
from msma.fitting.fitter import FitConfig, FitResult, fit_face_model
from msma.render.renderer import MeshRenderer

#: Side of the fit frame, pixels.
FIT_SIZE = 224
#: Crop side / larger side of the dense landmarks' box.
FIT_CROP_ENLARGE = 1.5


@dataclass(frozen=True)
class PhotoFit:
    """A face fitted in a photo.

    Attributes:
        result: the fitter's output (fit-frame pixels).
        crop_to_image: (3, 3) affine fit-frame pixels -> photo pixels.
        landmarks_68: (68, 2) the fitted model's 68 landmarks in photo pixels.
        initial_landmarks_68: (68, 2) the starting parameters' 68 landmarks in photo pixels.
    """

    result: FitResult
    crop_to_image: np.ndarray
    landmarks_68: np.ndarray
    initial_landmarks_68: np.ndarray


def fit_photo_face(
    face_model: FaceModel,
    corr: DenseCorrespondence,
    image: np.ndarray,
    dense: np.ndarray,
    renderer: MeshRenderer | None = None,
    config: FitConfig | None = None,
    init: FaceParams | None = None,
    size: int = FIT_SIZE,
    enlarge: float = FIT_CROP_ENLARGE,
) -> PhotoFit:
    """Fits the face whose MediaPipe points are ``dense``.

    Args:
        face_model: the model.
        corr: its correspondence to MediaPipe's mesh.
        image: (H, W, 3) uint8 RGB photo.
        dense: (478, 3) MediaPipe points in photo pixels (z relative depth in pixels).
        renderer: for the photometric stage (None: landmarks and priors only).
        config: fitting settings.
        init: start in the fit frame (default: mean face).
        size, enlarge: fit frame (module docstring).
    """
    from msma.data.align import box_crop_transform, warp_crop

    pts = np.asarray(dense, dtype=np.float64)
    lo, hi = pts[:, :2].min(0), pts[:, :2].max(0)
    m = box_crop_transform((lo[0], lo[1], hi[0], hi[1]), size, enlarge)
    inv = np.linalg.inv(m)
    xy = pts[:, :2] @ inv[:2, :2].T + inv[:2, 2]
    tgt = torch.as_tensor(np.concatenate([xy, pts[:, 2:] * inv[0, 0]], 1)[None], dtype=torch.float32)
    imgs = None
    if renderer is not None:
        crop = warp_crop(image.astype(np.float32) / 255.0, m, size)
        imgs = torch.from_numpy(crop.transpose(2, 0, 1).copy())[None]
    start = init if init is not None else face_model.layout.zeros(1)
    res = fit_face_model(face_model, corr, tgt, start, size, imgs, renderer, config)
    with torch.no_grad():
        lm0 = face_model(start.to(face_model.mean_shape.device), image_size=size).landmarks_2d[0].cpu().double().numpy()
    lm = res.landmarks_2d[0].cpu().double().numpy()
    return PhotoFit(res, m, lm @ m[:2, :2].T + m[:2, 2], lm0 @ m[:2, :2].T + m[:2, 2])
