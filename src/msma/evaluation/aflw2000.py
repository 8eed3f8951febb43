"""AFLW2000-3D evaluation: 68-point NME (2D and 3D) per yaw bin in the original image frame.

Protocol details (crop modes, ground truth, normalisation): docs/evaluation.md and :mod:`msma.metrics.nme`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from msma.data.batch import FaceBatch, collate_samples
from msma.face_model.model import FaceModel
from msma.metrics.nme import AFLW2000NME, YAW_BIN_NAMES, transform_points
from msma.utils.progress import progress_bar

#: AFLW2000-3D crop modes of ``msma eval``.
CROPS = ("gt_box", "box_aligned", "detect")


def predicted_landmarks_3d(
    landmarks_2d: Tensor, landmarks_3d_mm: Tensor, focal_px: float, distance_mm: float
) -> Tensor:
    """Predicted 68 landmarks as ``pt3d_68``-like points in crop pixels: x, y projected, z in pixel scale.

    Args:
        landmarks_2d: (B, 68, 2) projected landmarks in crop pixels.
        landmarks_3d_mm: (B, 68, 3) posed landmarks in mm (model frame, +z towards the camera).
        focal_px: the camera's focal length at the crop size, pixels.
        distance_mm: the camera distance, mm.

    Returns:
        (B, 68, 3): z is the model-frame depth times the local image scale ``focal / mean depth`` (crop pixels
        per mm at the face), +z towards the viewer as in ``pt3d_68``.
    """
    depth = (distance_mm - landmarks_3d_mm[..., 2]).mean(dim=1, keepdim=True)
    z = landmarks_3d_mm[..., 2] * focal_px / depth
    return torch.cat([landmarks_2d, z[..., None]], dim=-1)


def mean_face_box(face_model: FaceModel, image_size: int) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the mean face's 68 projected landmarks in an aligned ``image_size`` crop.

    With zero coefficients the face model's mean face sits where Deep3D's alignment puts a face (the alignment
    template is the mean face's 5 points, its origin on the principal point).
    """
    with torch.no_grad():
        zeros = face_model.layout.zeros(1, device=face_model.mean_shape.device)
        lm = face_model(zeros, image_size=image_size).landmarks_2d[0].double().cpu().numpy()
    return float(lm[:, 0].min()), float(lm[:, 1].min()), float(lm[:, 0].max()), float(lm[:, 1].max())


def box_aligned_transform(
    box: tuple[float, float, float, float], reference: tuple[float, float, float, float]
) -> np.ndarray:
    """Crop -> image affine that maps a reference landmark box (crop pixels) onto a given box (image pixels).

    Scale ``max(w / w_ref, h / h_ref)`` (the larger relative extent, so a profile's narrow box is sized by its
    height and a pitched face's short box by its width), translation box centre <- reference centre. It uses
    the ground-truth box only (no landmark positions inside it), as the 3DDFA protocol allows.

    Args:
        box: (left, top, right, bottom) in image pixels.
        reference: the same box of the mean face in an aligned crop (:func:`mean_face_box`), crop pixels.

    Returns:
        (3, 3) float64 affine crop pixels -> image pixels.
    """
    left, top, right, bottom = box
    rl, rt, rr, rb = reference
    if min(right - left, bottom - top, rr - rl, rb - rt) <= 0:
        raise ValueError(f"degenerate box {box} or reference {reference}")
    k = max((right - left) / (rr - rl), (bottom - top) / (rb - rt))
    cx, cy = 0.5 * (left + right), 0.5 * (top + bottom)
    rcx, rcy = 0.5 * (rl + rr), 0.5 * (rt + rb)
    return np.array([[k, 0.0, cx - k * rcx], [0.0, k, cy - k * rcy], [0.0, 0.0, 1.0]])


def _aflw_dataset(root: Path, crop: str, image_size: int, face_model: FaceModel, landmarks: str, detector: str) -> Any:
    """AFLW2000-3D with one of the crop modes (``gt_box``, ``box_aligned``, ``detect``)."""
    from msma.data.align import template_from_face_model
    from msma.data.detect import FaceBox
    from msma.data.mat_datasets import AFLW2000Dataset

    template = template_from_face_model(face_model)
    if crop != "box_aligned":
        return AFLW2000Dataset(
            root,
            crop="detect" if crop == "detect" else "gt_box",
            image_size=image_size,
            landmarks=landmarks,
            detector=detector,
            template=template,
        )
    reference = mean_face_box(face_model, image_size)

    class BoxAlignedAFLW2000(AFLW2000Dataset):
        def crop_transform(self, index: int) -> np.ndarray:
            b = FaceBox.from_points(self.records[index].landmarks)
            return box_aligned_transform((b.left, b.top, b.right, b.bottom), reference)

    return BoxAlignedAFLW2000(root, crop="gt_box", image_size=image_size, template=template)


def evaluate_aflw2000(
    module: Any,
    root: Path,
    crop: str,
    image_size: int,
    device: torch.device,
    batch_size: int,
    limit: int | None,
    landmarks: str = "dlib",
    detector: str = "dlib",
    *,
    flip_average: bool = True,
    clamp_expressions: bool = True,
) -> dict[str, Any]:
    """AFLW2000-3D 68-point NME (2D and 3D) per yaw bin; see :mod:`msma.metrics.nme`.

    ``flip_average`` and ``clamp_expressions`` are the test-time treatment of ``msma reconstruct`` and ``msma eval
    --data photos`` (:func:`msma.pipeline.reconstruct`): the coefficients averaged over the crop and its mirror
    image (every group with the face model's :class:`~msma.face_model.mirror.CoefficientMirror`, else the pose),
    blendshape weights clamped to [0, 1]. Both False: the network's raw single pass.
    """
    from msma.face_model.mirror import CoefficientMirror

    dataset = _aflw_dataset(root, crop, image_size, module.face_model, landmarks, detector)
    mirror = CoefficientMirror.from_face_model(module.face_model) if flip_average else None
    if len(dataset) == 0:
        raise FileNotFoundError(f"{root}: no AFLW2000-3D samples (image*.jpg + .mat)")
    data = Subset(dataset, range(limit)) if limit is not None and limit < len(dataset) else dataset
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate_samples)
    metric = AFLW2000NME()
    camera = module.face_model.camera
    with torch.no_grad():
        for batch in progress_bar(loader, total=len(loader), desc="aflw2000_3d", unit="batch"):
            batch = batch.to(device)
            assert isinstance(batch, FaceBatch) and batch.landmarks_3d is not None
            out = module.reconstruct(
                batch.image,
                render=False,
                flip_average=flip_average,
                mirror=mirror,
                clamp_expressions=clamp_expressions,
            )
            lm3 = predicted_landmarks_3d(
                out.face.landmarks_2d, out.face.landmarks_3d, camera.focal(image_size), camera.distance
            )
            pred3 = transform_points(lm3.double(), batch.crop_to_image.double())
            gt3 = batch.landmarks_3d.double()
            metric.update(pred3[..., :2], gt3[..., :2], batch.yaw, pred_3d=pred3, gt_3d=gt3)
    res = metric.summary()
    return {
        **res.as_dict(),
        "protocol": {
            "ground_truth": "original AFLW2000-3D pt3d_68 (not the re-annotated set)",
            "normalisation": "sqrt(w*h) of the ground-truth 68-point box, original 450x450 image frame",
            "crop": crop,
            "crop_detail": {
                "gt_box": "square on the ground-truth 68-point box, side sqrt(2)*max(w,h) (3DDFA benchmark)",
                "box_aligned": "the ground-truth 68-point box mapped onto the mean face's box in a Deep3D-aligned "
                "crop (scale max(w/w0, h/h0), centres matched): the box alone, at the training crops' scale",
                "detect": f"own detector ({detector}) + {landmarks} landmarks + Deep3D 5-point alignment"
                + ("" if detector == "mediapipe" else "; where it finds no face, MediaPipe's chain and landmarks"),
            }[crop],
            "detect_fallbacks_to_gt_box": int(getattr(dataset, "detect_fallbacks", 0)),
            "detected_by_mediapipe_fallback": int(getattr(dataset, "detected_by_fallback", 0)),
            "flip_average": (
                "coefficients averaged over the crop and its mirror image "
                + ("(every group)" if mirror is not None else "(pose only: the mesh is not mirror-symmetric)")
            )
            if flip_average
            else "none (single pass)",
            "clamp_expressions": "blendshape weights clamped to [0, 1]"
            if clamp_expressions and module.face_model.exp_kind == "blendshape"
            else "none",
            "yaw_bins_deg": list(YAW_BIN_NAMES),
            "reference_bin_counts_full_set_3ddfa": [1312, 383, 305],
            "nme_3d": "x,y,z of pt3d_68, each set's z centred on its mean, same normaliser",
        },
    }
