"""Face crops: Deep3DFaceRecon's 5-point alignment and the AFLW2000-3D box protocol.

Deep3D's preprocessing (``util/preprocess.py`` of Deep3DFaceRecon_pytorch: ``extract_5p``, ``POS``,
``align_img``, ``resize_n_crop_img``):

1. 5 points from the 68 landmarks: nose tip 30, eye centres mean(36, 39) and mean(42, 45), mouth corners 48, 54;
2. ``POS``: a least-squares affine camera ``x = A [X; 1]`` from the 3D 5-point template ``X`` to the 5 image
   points; scale ``s = (|A[0, :3]| + |A[1, :3]|) / 2`` (pixels per template unit), translation ``t = A[:, 3]``
   (where the template origin lands in the image). Only scale and translation are used: the crop is **not**
   rotated (in-plane roll is left to the network);
3. the image is resized by ``102 / s`` (bicubic) so one template unit (0.1 m in BFM) spans 102 px, and the
   224 px crop is centred on ``t``.

Here the template is in millimetres, so ``rescale_factor / 100`` is the crop's pixels per mm, and the crop is
centred on the principal point of :class:`~msma.face_model.camera.PerspectiveCamera` (111.5 in pixel-index
units), which is where the model origin projects with zero translation.

The template: Deep3D's ``BFM/similarity_Lm3D_all.mat`` is not redistributable and not in this repository, so
:data:`ICT_TEMPLATE_5P_MM` is derived from the embedded ICT face model's mean face (its 68 landmark vertices,
5 points taken as above, model frame, mm). :func:`template_from_face_model` recomputes it from any
:class:`~msma.face_model.model.FaceModel` (e.g. BFM) for a crop that matches that model's mean face.

Coordinates: pixel-index units everywhere (x right, y down, pixel (i, j) centre at x=j, y=i). Every crop
comes with its ``crop_to_image`` (3, 3) affine so predictions map back to the original photo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from msma.data.landmark_index import five_points_np

if TYPE_CHECKING:
    from msma.face_model.model import FaceModel

#: Deep3D's crop size and rescale factor (``align_img(..., target_size=224., rescale_factor=102.)``).
DEEP3D_CROP_SIZE = 224
DEEP3D_RESCALE_FACTOR = 102.0
#: Deep3D's template unit (the BFM after its 1e-5 scaling, camera at 10 units = 1 m) in millimetres.
DEEP3D_TEMPLATE_UNIT_MM = 100.0
#: AFLW2000-3D protocol (3DDFA / SynergyNet): square side = sqrt(2) * max(w, h) of the 68-point box.
AFLW_BOX_ENLARGE = math.sqrt(2.0)

#: 5-point 3D template in mm, model frame (x to the viewer's right, y up, z towards the camera), order
#: (eye centre viewer-left, eye centre viewer-right, nose tip, mouth corner viewer-left, mouth corner
#: viewer-right). Derived from the ICT-FaceKit mean face as converted by ``msma.face_model`` (its 68 landmark
#: vertices, ``landmark_idx``), i.e. ``template_from_face_model(load_face_model("ict"))``; a unit test checks
#: that this constant still matches the converted model.
ICT_TEMPLATE_5P_MM = np.array(
    [
        [-31.5139, 28.7007, -3.9081],
        [31.5155, 28.7030, -3.9092],
        [0.0, -0.6600, 37.7896],
        [-25.3489, -39.9151, 8.9736],
        [25.3489, -39.9151, 8.9736],
    ],
    dtype=np.float64,
)


@dataclass(frozen=True)
class AlignedFace:
    """An aligned square face crop.

    Attributes:
        image: (S, S, 3) float32 RGB in [0, 1].
        landmarks: (68, 2) float32 landmarks in crop pixels (NaN when unknown).
        crop_to_image: (3, 3) float64 affine, crop pixel coordinates -> original image pixel coordinates.
    """

    image: np.ndarray
    landmarks: np.ndarray
    crop_to_image: np.ndarray


def template_from_face_model(face_model: FaceModel) -> np.ndarray:
    """The 5-point 3D template of a face model's mean face.

    Args:
        face_model: a :class:`~msma.face_model.model.FaceModel` (``mean_shape`` (N, 3) mm, ``landmark_idx`` (68,)).

    Returns:
        (5, 3) float64 in mm, model frame, in the order of :func:`five_points_np`.
    """
    mean = face_model.mean_shape.detach().cpu().double().numpy()
    idx = face_model.landmark_idx.detach().cpu().numpy()
    return five_points_np(mean[idx])


def template_positions(
    template: np.ndarray = ICT_TEMPLATE_5P_MM,
    image_size: int = DEEP3D_CROP_SIZE,
    rescale_factor: float = DEEP3D_RESCALE_FACTOR,
) -> np.ndarray:
    """Where the template's points land in an aligned frontal crop (orthographic, as Deep3D's alignment).

    Returns:
        (5, 2) float64 crop pixels (x right, y down).
    """
    k = rescale_factor / DEEP3D_TEMPLATE_UNIT_MM * image_size / DEEP3D_CROP_SIZE
    c = image_size / 2.0 - 0.5
    t = np.asarray(template, dtype=np.float64)
    return np.stack([c + k * t[:, 0], c - k * t[:, 1]], axis=1)


def estimate_scale_translation(points: np.ndarray, template: np.ndarray) -> tuple[float, np.ndarray]:
    """Deep3D's ``POS``: least-squares affine camera from a 3D template to image points.

    Args:
        points: (K, 2) image points in pixels, K >= 4.
        template: (K, 3) template points (any unit).

    Returns:
        ``(s, t)``: scale in pixels per template unit (mean norm of the affine's two rows) and (2,) translation,
        the image position of the template origin.

    Raises:
        ValueError: non-finite input or a degenerate fit.
    """
    x = np.asarray(points, dtype=np.float64)
    X = np.asarray(template, dtype=np.float64)
    if x.shape[0] != X.shape[0] or x.shape[0] < 4 or x.shape[1] != 2 or X.shape[1] != 3:
        raise ValueError(f"need (K, 2) points and (K, 3) template with K >= 4, got {x.shape} and {X.shape}")
    if not (np.isfinite(x).all() and np.isfinite(X).all()):
        raise ValueError("alignment points must be finite")
    design = np.concatenate([X, np.ones((X.shape[0], 1))], axis=1)  # (K, 4)
    A, *_ = np.linalg.lstsq(design, x, rcond=None)  # (4, 2)
    s = 0.5 * (np.linalg.norm(A[:3, 0]) + np.linalg.norm(A[:3, 1]))
    if not np.isfinite(s) or s <= 1e-8:
        raise ValueError(f"degenerate alignment (scale {s})")
    return float(s), A[3].copy()


def alignment_transform(
    landmarks: np.ndarray,
    template: np.ndarray = ICT_TEMPLATE_5P_MM,
    image_size: int = DEEP3D_CROP_SIZE,
    rescale_factor: float = DEEP3D_RESCALE_FACTOR,
) -> np.ndarray:
    """Deep3D's crop for 68 (or 5) landmarks.

    Args:
        landmarks: (68, 2) or (5, 2) image pixels.
        template: (5, 3) 3D template in mm.
        image_size: crop side S in pixels (Deep3D: 224; other sizes scale the crop uniformly).
        rescale_factor: crop pixels per template unit of 100 mm at S = 224 (Deep3D: 102).

    Returns:
        (3, 3) float64 affine crop pixels -> image pixels (scale and translation only).
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    pts5 = five_points_np(lm) if lm.shape[0] == 68 else lm
    if pts5.shape != (5, 2):
        raise ValueError(f"alignment needs (68, 2) or (5, 2) landmarks, got {lm.shape}")
    s, t = estimate_scale_translation(pts5, template)
    k = rescale_factor / DEEP3D_TEMPLATE_UNIT_MM * image_size / DEEP3D_CROP_SIZE  # crop px per mm
    inv = s / k  # image px per crop px
    c = image_size / 2.0 - 0.5
    return np.array([[inv, 0.0, t[0] - c * inv], [0.0, inv, t[1] - c * inv], [0.0, 0.0, 1.0]])


def box_crop_transform(
    box: tuple[float, float, float, float], image_size: int = DEEP3D_CROP_SIZE, enlarge: float = AFLW_BOX_ENLARGE
) -> np.ndarray:
    """Square crop centred on a box, side ``enlarge * max(w, h)``, resized to ``image_size``.

    Args:
        box: (left, top, right, bottom) image pixels (e.g. the ground-truth 68-point box for AFLW2000-3D).
        image_size: crop side S in pixels.
        enlarge: side / max(w, h) (sqrt(2): the diagonal of the enclosing square; 3DDFA / SynergyNet protocol).

    Returns:
        (3, 3) float64 affine crop pixels -> image pixels; the crop's outer edges (-0.5, S - 0.5) map to the
        square's edges.
    """
    left, top, right, bottom = (float(v) for v in box)
    side = enlarge * max(right - left, bottom - top)
    if not np.isfinite(side) or side <= 0:
        raise ValueError(f"box {box} has no extent")
    cx, cy = 0.5 * (left + right), 0.5 * (top + bottom)
    k = side / image_size
    return np.array([[k, 0.0, cx - side / 2 + 0.5 * k], [0.0, k, cy - side / 2 + 0.5 * k], [0.0, 0.0, 1.0]])


def recrop_transform(
    landmarks_crop: np.ndarray,
    crop_to_image: np.ndarray,
    template: np.ndarray = ICT_TEMPLATE_5P_MM,
    image_size: int = DEEP3D_CROP_SIZE,
) -> np.ndarray:
    """Deep3D's aligned crop on a network's own predicted landmarks (the second step of a two-step cascade).

    A face found as a box only (no landmarks: an extreme profile) is first cropped from its box, which does not
    place and scale it as the 5-point-aligned training crops do; the network's 68 predicted landmarks, taken
    back to the image, give the aligned crop for a second pass. 3DDFA_V2 crops the same way in two steps
    (``crop_policy='landmark'``: the box, then the ROI of its first prediction's landmarks).

    Args:
        landmarks_crop: (68, 2) predicted landmarks in the first crop's pixels.
        crop_to_image: (3, 3) affine of the first crop, crop pixels -> image pixels.
        template: (5, 3) alignment template in mm.
        image_size: crop side S.

    Returns:
        (3, 3) float64 affine, crop pixels -> image pixels, of the aligned crop (:func:`alignment_transform`).

    Raises:
        ValueError: non-finite landmarks or a shape other than (68, 2).
    """
    lm = np.asarray(landmarks_crop, dtype=np.float64)
    if lm.shape != (68, 2) or not np.all(np.isfinite(lm)):
        raise ValueError(f"re-cropping needs (68, 2) finite landmarks, got {lm.shape}")
    return alignment_transform(apply_affine(crop_to_image, lm), template, image_size)


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(3, 3) affine applied to (K, 2) points -> (K, 2) (NaN propagates)."""
    p = np.asarray(points, dtype=np.float64)
    return p @ matrix[:2, :2].T + matrix[:2, 2]


def warp_crop(image: np.ndarray, crop_to_image: np.ndarray, image_size: int) -> np.ndarray:
    """Resamples the crop defined by ``crop_to_image`` (bicubic; area pre-filter when shrinking).

    Pixels outside the photo are black, as Deep3D's PIL crop pads them.

    Args:
        image: (H, W, 3) float32 RGB in [0, 1].
        crop_to_image: (3, 3) affine crop -> image pixels.
        image_size: crop side S.

    Returns:
        (S, S, 3) float32 in [0, 1].
    """
    m = np.asarray(crop_to_image, dtype=np.float64)
    src = np.ascontiguousarray(image, dtype=np.float32)
    scale = math.sqrt(abs(np.linalg.det(m[:2, :2])))  # image px per crop px
    if scale > 1.5:
        # Shrink the relevant region with an area filter first so bicubic sampling does not alias
        # (Deep3D resizes the whole photo with PIL's antialiasing bicubic; this is the same idea, cheaper).
        corners = apply_affine(m, np.array([[-0.5, -0.5], [image_size, -0.5], [-0.5, image_size], [image_size] * 2]))
        h, w = src.shape[:2]
        x0 = int(max(0, math.floor(corners[:, 0].min()) - 2))
        y0 = int(max(0, math.floor(corners[:, 1].min()) - 2))
        x1 = int(min(w, math.ceil(corners[:, 0].max()) + 3))
        y1 = int(min(h, math.ceil(corners[:, 1].max()) + 3))
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            region = src[y0:y1, x0:x1]
            f = 1.0 / scale
            rw, rh = max(1, round((x1 - x0) * f)), max(1, round((y1 - y0) * f))
            small = cv2.resize(region, (rw, rh), interpolation=cv2.INTER_AREA)
            fx, fy = rw / (x1 - x0), rh / (y1 - y0)
            # region-small pixel q = (p - origin + 0.5) * f - 0.5
            to_small = np.array([[fx, 0.0, (0.5 - x0) * fx - 0.5], [0.0, fy, (0.5 - y0) * fy - 0.5], [0, 0, 1.0]])
            m = to_small @ m
            src = np.ascontiguousarray(small)
    out = cv2.warpAffine(
        src,
        m[:2].astype(np.float64),
        (image_size, image_size),
        flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0.0, 0.0, 0.0),
    )
    if out.ndim == 2:
        out = out[..., None]
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def crop_face(
    image: np.ndarray, crop_to_image: np.ndarray, landmarks: np.ndarray | None, image_size: int
) -> AlignedFace:
    """Warps the crop and carries landmarks into crop coordinates.

    Args:
        image: (H, W, 3) float32 RGB in [0, 1].
        crop_to_image: (3, 3) affine crop -> image.
        landmarks: (68, 2) image pixels or None.
        image_size: crop side S.
    """
    crop = warp_crop(image, crop_to_image, image_size)
    if landmarks is None:
        lm = np.full((68, 2), np.nan, dtype=np.float32)
    else:
        lm = apply_affine(np.linalg.inv(crop_to_image), landmarks).astype(np.float32)
    return AlignedFace(image=crop, landmarks=lm, crop_to_image=np.asarray(crop_to_image, dtype=np.float64))


def align_face(
    image: np.ndarray,
    landmarks: np.ndarray,
    template: np.ndarray = ICT_TEMPLATE_5P_MM,
    image_size: int = DEEP3D_CROP_SIZE,
    rescale_factor: float = DEEP3D_RESCALE_FACTOR,
) -> AlignedFace:
    """Deep3D's aligned crop of one face.

    Args:
        image: (H, W, 3) float32 RGB in [0, 1].
        landmarks: (68, 2) image pixels (x right, y down).
        template: (5, 3) 3D template in mm.
        image_size: crop side S.
        rescale_factor: Deep3D's 102.

    Returns:
        The crop, the 68 landmarks in crop pixels and the crop -> image affine.
    """
    m = alignment_transform(landmarks, template, image_size, rescale_factor)
    return crop_face(image, m, landmarks, image_size)


def crop_by_box(
    image: np.ndarray,
    box: tuple[float, float, float, float],
    landmarks: np.ndarray | None = None,
    image_size: int = DEEP3D_CROP_SIZE,
    enlarge: float = AFLW_BOX_ENLARGE,
) -> AlignedFace:
    """The AFLW2000-3D protocol crop: square on ``box`` (side ``enlarge * max(w, h)``), resized to S."""
    return crop_face(image, box_crop_transform(box, image_size, enlarge), landmarks, image_size)
