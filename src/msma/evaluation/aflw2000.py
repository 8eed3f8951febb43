"""AFLW2000-3D evaluation: 68-point NME (2D and 3D) per yaw bin in the original image frame.

Protocol details (crop modes, ground truth, normalisation): docs/evaluation.md and :mod:`msma.metrics.nme`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from msma.data.batch import FaceBatch, collate_samples
from msma.face_model.model import FaceModel
from msma.metrics.nme import AFLW2000NME, YAW_BIN_NAMES, transform_points
from msma.utils.progress import progress_bar

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class _Prediction:
    """One AFLW2000-3D item's prediction: 68 ``pt3d_68``-like points in image pixels and where they came from."""

    points_3d: Tensor  # (68, 3) float64, original image pixels (z in pixel scale)
    landmarks_crop: np.ndarray  # (68, 2) projected landmarks, crop pixels
    crop_to_image: np.ndarray  # (3, 3) crop -> original image pixels
    gt_3d: Tensor  # (68, 3) float64 pt3d_68.T
    yaw: float  # degrees


def _strict_batches(
    dataset: Any, indices: list[int], batch_size: int, skipped: dict[str, str]
) -> Iterator[list[tuple[int, Any]]]:
    """``(index, sample)`` lists of up to ``batch_size`` readable items; unreadable ones go to ``skipped``."""
    from msma.data.dataset_base import LOAD_ERRORS

    chunk: list[tuple[int, Any]] = []
    for i in indices:
        try:
            chunk.append((i, dataset.load_strict(i)))
        except LOAD_ERRORS as exc:
            path = str(dataset.records[i].image)
            reason, detail = getattr(exc, "reason", None), getattr(exc, "detail", "")
            skipped[path] = f"{reason}: {detail}" if reason and detail else f"unreadable: {exc}"
            log.warning("%s: skipped (%s)", path, exc)
        if len(chunk) == batch_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _predict_items(
    module: Any,
    dataset: Any,
    indices: list[int],
    image_size: int,
    device: torch.device,
    batch_size: int,
    treatment: dict[str, Any],
    desc: str,
    skipped: dict[str, str],
) -> dict[int, _Prediction]:
    """The pipeline's predictions for dataset items ``indices`` (crops as the dataset makes them).

    An item whose files cannot be read is left out and its reason stored in ``skipped`` (image path -> reason);
    no other photo is scored in its place (:meth:`~msma.data.dataset_base.RobustDataset.load_strict`).
    """
    camera = module.face_model.camera
    out: dict[int, _Prediction] = {}
    n_batches = -(-len(indices) // max(1, batch_size))
    with torch.no_grad():
        for chunk in progress_bar(
            _strict_batches(dataset, indices, batch_size, skipped), total=n_batches, desc=desc, unit="batch"
        ):
            order = iter([i for i, _ in chunk])
            batch = collate_samples([s for _, s in chunk]).to(device)
            assert isinstance(batch, FaceBatch) and batch.landmarks_3d is not None and batch.crop_to_image is not None
            rec = module.reconstruct(batch.image, render=False, **treatment)
            lm3 = predicted_landmarks_3d(
                rec.face.landmarks_2d, rec.face.landmarks_3d, camera.focal(image_size), camera.distance
            )
            pred3 = transform_points(lm3.double(), batch.crop_to_image.double()).cpu()
            for b in range(pred3.shape[0]):
                out[next(order)] = _Prediction(
                    points_3d=pred3[b],
                    landmarks_crop=rec.face.landmarks_2d[b].detach().double().cpu().numpy(),
                    crop_to_image=batch.crop_to_image[b].detach().double().cpu().numpy(),
                    gt_3d=batch.landmarks_3d[b].double().cpu(),
                    yaw=float(batch.yaw[b]),
                )
    return out


def _mean_present(bins: Any) -> float:
    """Mean of the bin means that have photos (NaN if none): a folder without photos at some yaw has no 3DDFA
    balanced mean, this is its stand-in, named as such."""
    present = [float(b) for b in bins if b == b]
    return sum(present) / len(present) if present else float("nan")


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
    recrop: int = 0,
) -> dict[str, Any]:
    """AFLW2000-3D 68-point NME (2D and 3D) per yaw bin; see :mod:`msma.metrics.nme`.

    ``flip_average`` and ``clamp_expressions`` are the test-time treatment of ``msma reconstruct`` and ``msma eval
    --data photos`` (:func:`msma.pipeline.reconstruct`): the coefficients averaged over the crop and its mirror
    image (every group with the face model's :class:`~msma.face_model.mirror.CoefficientMirror`, else the pose),
    blendshape weights clamped to [0, 1]. Both False: the network's raw single pass.

    ``recrop``: passes of the two-step crop for photos cropped from a box (every photo with ``gt_box`` and
    ``box_aligned``, those without a detected face with ``detect``): the network's predicted landmarks give
    Deep3D's 5-point-aligned crop of the next pass (:func:`msma.data.align.recrop_transform`), as ``msma
    reconstruct`` does for box-only faces; 0 (default): the box crop's prediction alone. Measured with an
    ``embedded`` checkpoint (docs/evaluation.md) it helps the ``gt_box`` crop of a frontal face, not a profile's,
    and costs ``box_aligned``, hence off by default.
    """
    from msma.data.align import recrop_transform
    from msma.face_model.mirror import CoefficientMirror

    if int(recrop) < 0:
        raise ValueError(f"recrop must be >= 0, got {recrop}")
    dataset = _aflw_dataset(root, crop, image_size, module.face_model, landmarks, detector)
    mirror = CoefficientMirror.from_face_model(module.face_model) if flip_average else None
    if len(dataset) == 0:
        raise FileNotFoundError(f"{root}: no AFLW2000-3D samples (image*.jpg + .mat)")
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    treatment = {"flip_average": flip_average, "mirror": mirror, "clamp_expressions": clamp_expressions}
    skipped: dict[str, str] = {}
    preds = _predict_items(
        module, dataset, list(range(n)), image_size, device, batch_size, treatment, "aflw2000_3d", skipped
    )
    boxed = [i for i in preds if dataset.box_cropped(i)]
    for k in range(int(recrop) if boxed else 0):
        for i in boxed:
            p = preds[i]
            dataset.recrops[i] = recrop_transform(p.landmarks_crop, p.crop_to_image, dataset.template, image_size)
        desc = f"aflw2000_3d re-crop {k + 1}"
        preds.update(_predict_items(module, dataset, boxed, image_size, device, batch_size, treatment, desc, skipped))
    metric = AFLW2000NME()
    for i in sorted(preds):
        p = preds[i]
        pred3, gt3 = p.points_3d[None], p.gt_3d[None]
        metric.update(pred3[..., :2], gt3[..., :2], torch.tensor([p.yaw]), pred_3d=pred3, gt_3d=gt3)
    res = metric.summary()
    bad_annotations = {str(r.path): f"{r.reason}: {r.detail}" for r in getattr(dataset, "skipped", [])}
    return {
        **res.as_dict(),
        "skipped": [{"image": k, "skipped": v} for k, v in sorted({**bad_annotations, **skipped}.items())],
        "balanced_present": _mean_present(res.bins),
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
            "recrop": (
                f"{int(recrop)} pass(es) re-cropped on the network's own landmarks (Deep3D alignment) for the "
                f"{len(boxed)} photo(s) cropped from a box"
            )
            if int(recrop) > 0 and boxed
            else "none",
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
