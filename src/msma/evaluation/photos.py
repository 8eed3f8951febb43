"""Real labelled photos: 68-point NME of a checkpoint and of the mean face under the same detection/alignment.

A folder (searched recursively) of photos, each with a ``<stem>.pts`` (iBUG/menpo, 1-based pixel coordinates) or
an AFLW-style ``<stem>.mat`` (``pt3d_68``, else ``pt2d``) next to it. Each photo goes through what a user runs
(:class:`msma.inference.Reconstructor`: face detection, 68-point detection, 5-point alignment, network); the
ground truth is used only to score, and, when the largest detection (what ``msma reconstruct`` takes) is not the
annotated face, to pick the detection whose box centre is closest to the annotated face's (the annotation names
the face, never the crop); a photo where no detection lies within half the annotated box size of it counts as
not detected. A photo that cannot be read (corrupt, truncated, empty, ...) or whose annotation is malformed is
skipped with its reason and counted (``skipped``), as every msma data path does. The untrained network
(the mean face) is run on the same detections and crops, so the comparison isolates what the network learned.

NME: mean point-to-point distance over the 68 points in original-image pixels divided by ``sqrt(w * h)`` of the
ground-truth landmark box (AFLW2000-3D's 2D protocol, :func:`msma.metrics.nme.nme`). Photos whose ``.mat`` holds
``Pose_Para`` (AFLW2000-3D, 300W-LP) are also binned by absolute yaw as the AFLW2000-3D evaluation bins them
(:func:`msma.metrics.nme.yaw_bin`: <= 30, <= 60, above) and the mean
over the bins present is reported (3DDFA's balanced NME when all three are present).

With ``fit=True`` the checkpoint's column is ``msma reconstruct --fit`` (MediaPipe's detection chain and dense
landmarks, then 3DMM fitting started from the checkpoint's prediction); the mean-face column stays the untrained
network on the same detections and crops.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msma.data.io import BadImageError, list_images
from msma.data.landmarks import LandmarkError, sibling_annotation
from msma.metrics.nme import YAW_BIN_NAMES, nme, yaw_bin


@dataclass(frozen=True)
class PhotoItem:
    """One labelled photo: its path, (68, 2) ground-truth landmarks (0-based pixels, x right, y down) and the
    ground-truth yaw in degrees (``Pose_Para[1]`` of an AFLW-style ``.mat``; None for ``.pts``)."""

    path: Path
    landmarks: np.ndarray
    yaw: float | None = None


def _mat_yaw(path: Path) -> float | None:
    """``Pose_Para[1]`` in degrees of an AFLW-style ``.mat`` next to ``path``, or None."""
    mat = path.with_suffix(".mat")
    if path.with_suffix(".pts").is_file() or not mat.is_file():
        return None
    import scipy.io

    try:
        pose = np.asarray(scipy.io.loadmat(str(mat)).get("Pose_Para", []), dtype=np.float64).reshape(-1)
    except (ValueError, OSError, TypeError):
        return None
    return float(np.degrees(pose[1])) if pose.size >= 2 and np.isfinite(pose[1]) else None


def yaw_bin_name(yaw: float | None) -> str | None:
    """The AFLW2000-3D yaw bin (:data:`~msma.metrics.nme.YAW_BIN_NAMES`, :func:`~msma.metrics.nme.yaw_bin`) of a yaw
    in degrees; None when unknown."""
    if yaw is None:
        return None
    k = int(yaw_bin(yaw))
    return YAW_BIN_NAMES[k] if k >= 0 else None


def binned_nme(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Mean ``key`` per yaw bin over the scored rows that have a ``yaw_bin``, and their mean over the bins present.

    Returns:
        ``{"bins": {label: mean or None}, "counts": {label: n}, "balanced": mean over present bins or None,
        "all_bins_present": bool}``.
    """
    bins: dict[str, float | None] = {}
    counts: dict[str, int] = {}
    for name in YAW_BIN_NAMES:
        vals = [r[key] for r in rows if r.get("yaw_bin") == name and key in r]
        bins[name] = float(np.mean(vals)) if vals else None
        counts[name] = len(vals)
    present = [v for v in bins.values() if v is not None]
    return {
        "bins": bins,
        "counts": counts,
        "balanced": float(np.mean(present)) if present else None,
        "all_bins_present": len(present) == len(YAW_BIN_NAMES),
    }


def scan_photo_folder(root: str | Path) -> tuple[list[PhotoItem], list[dict[str, str]]]:
    """Every image under ``root`` with a 68-point annotation next to it (sorted by path), and the malformed ones.

    Returns:
        ``(items, skipped)``: the photos whose annotation reads, and ``{"image", "skipped"}`` rows (reason
        ``bad_annotation: <the annotation's error, naming its file>``) for those whose annotation does not.

    Raises:
        FileNotFoundError: ``root`` is not a folder or holds no image with a ``.pts`` / ``.mat`` next to it.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"photos: {root} is not a folder")
    items: list[PhotoItem] = []
    skipped: list[dict[str, str]] = []
    for path in list_images(root, unsupported=True):  # an unreadable format is skipped when reconstructed
        if not (path.with_suffix(".pts").is_file() or path.with_suffix(".mat").is_file()):
            continue
        try:
            items.append(PhotoItem(path, sibling_annotation(path), _mat_yaw(path)))
        except LandmarkError as exc:
            skipped.append({"image": str(path), "skipped": f"bad_annotation: {exc}"})
    if not items and not skipped:
        raise FileNotFoundError(f"photos: no image with a .pts or .mat annotation under {root}")
    return items, skipped


def centre_distance(box: tuple[float, float, float, float], gt: np.ndarray) -> float:
    """Distance in pixels from a detection box's centre (left, top, right, bottom) to the centre of the (68, 2)
    annotation's bounding box."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    g = (gt.min(0) + gt.max(0)) / 2
    return float(np.hypot(cx - g[0], cy - g[1]))


def reconstruct_annotated(rec: Any, item: PhotoItem) -> tuple[list[Any], bool]:
    """The faces ``msma reconstruct`` gives for a labelled photo: the largest face when it is the annotated one, else
    every detection (the annotated face is then the nearest one, :func:`centre_distance`).

    Args:
        rec: a :class:`msma.inference.Reconstructor`.
        item: the photo and its annotation.

    Returns:
        (the reconstructions, whether every face was asked for).

    Raises:
        NoFaceError / BadImageError: as :meth:`msma.inference.Reconstructor.reconstruct_faces`.
    """
    recs = rec.reconstruct_faces(str(item.path), all_faces=False)
    all_faces = centre_distance(recs[0].box, item.landmarks) > annotation_radius(item.landmarks)
    if all_faces:
        recs = rec.reconstruct_faces(str(item.path), all_faces=True)
    return recs, all_faces


def annotation_radius(gt: np.ndarray) -> float:
    """Half of sqrt(w * h) of the annotation's box, pixels: a detection whose box centre is further away is another
    face."""
    ext = gt.max(0) - gt.min(0)
    return 0.5 * float(np.sqrt(ext[0] * ext[1]))


def photo_nme(pred: np.ndarray, gt: np.ndarray) -> float:
    """68-point NME (fraction) of one photo, normalised by ``sqrt(w * h)`` of the ground-truth box."""
    return float(
        nme(torch.as_tensor(pred, dtype=torch.float64)[None], torch.as_tensor(gt, dtype=torch.float64)[None])[0]
    )


def evaluate_photos(
    ckpt: str | Path | None,
    root: str | Path,
    device: str | torch.device = "cpu",
    detector: str = "dlib",
    landmarks: str = "dlib",
    image_size: int | None = None,
    limit: int | None = None,
    fit: bool = False,
    flip_average: bool = True,
    clamp_expressions: bool = True,
) -> dict[str, Any]:
    """Per-photo and mean NME of a checkpoint and of the mean face (same detections and crops).

    Args:
        ckpt: checkpoint path, or None / ``"mean"`` (then both columns are the mean face).
        root: the photo folder.
        device: where the networks run.
        detector: face detector (:func:`msma.data.detect.make_detector`).
        landmarks: 68-point backend for the alignment (``"dlib"``, ``"fan"`` or ``"mediapipe"``; never the
            ground truth).
        image_size: crop size (default: the checkpoint's).
        limit: evaluate the first N photos only.
        fit: score ``msma reconstruct --fit`` for the checkpoint (needs ``landmarks="mediapipe"``).
        flip_average: the checkpoint's coefficients averaged over the crop and its mirror image, as ``msma
            reconstruct`` (:func:`msma.pipeline.predict_params`, every group with the face model's
            :class:`~msma.face_model.mirror.CoefficientMirror`); the mean face is the same either way.
        clamp_expressions: the checkpoint's blendshape weights projected onto [0, 1], as ``msma reconstruct``
            (:meth:`msma.face_model.model.FaceModel.in_range`).

    Returns:
        ``{"images": [{"image", "nme", "nme_mean_face", "faces_detected", "yaw", "yaw_bin"} | {"image",
        "skipped"}], "mean", "mean_mean_face", "ratio", "better_than_mean_face", "count", "skipped", "yaw_bins"
        ({"checkpoint": binned, "mean_face": binned}, see :func:`binned_nme`), "protocol"}`` (NME in percent).
    """
    from msma.inference import NoFaceError, Reconstructor

    if landmarks == "gt":
        raise ValueError(
            "photos: the alignment must not use the ground truth; use landmarks 'dlib', 'fan' or 'mediapipe'"
        )
    if fit and landmarks != "mediapipe":
        raise ValueError("photos: fitting needs MediaPipe's dense landmarks: use landmarks 'mediapipe' with fit")
    items, bad_annotations = scan_photo_folder(root)
    items = items[:limit]
    rows: list[dict[str, Any]] = list(bad_annotations)
    backend = "torch" if torch.device(device).type == "cpu" else "auto"
    trained = Reconstructor(
        ckpt,
        device=device,
        detector=detector,
        landmarks=landmarks,
        image_size=image_size,
        renderer_backend=backend,
        fit=fit,
        flip_average=flip_average,
        clamp_expressions=clamp_expressions,
    )
    mean = Reconstructor(
        None,
        device=device,
        detector=detector,
        landmarks=landmarks,
        image_size=trained.image_size,
        renderer_backend=backend,
    )
    for item in items:
        near = annotation_radius(item.landmarks)
        try:
            # First exactly what `msma reconstruct` does (the largest face); if that is not the annotated face,
            # every detection, and the one nearest the annotation.
            recs, all_faces = reconstruct_annotated(trained, item)
            base = mean.reconstruct_faces(str(item.path), all_faces=all_faces)
        except NoFaceError as exc:
            rows.append({"image": str(item.path), "skipped": f"no_face: {exc}"})
            continue
        except BadImageError as exc:  # a corrupt photo is skipped and counted, as every msma data path does
            rows.append({"image": str(item.path), "skipped": f"{exc.reason}: {exc.detail}"})
            continue
        dist = [centre_distance(r.box, item.landmarks) for r in recs]
        k = int(np.argmin(dist))
        if dist[k] > near:
            rows.append(
                {
                    "image": str(item.path),
                    "skipped": f"missed: none of the {len(recs)} detected face(s) is the annotated face "
                    f"(nearest box centre {dist[k]:.0f} px away)",
                }
            )
            continue
        if len(base) != len(recs) or not np.allclose(base[k].crop_to_image, recs[k].crop_to_image, atol=1e-4):
            raise RuntimeError(f"{item.path}: the mean face saw other crops than the checkpoint")
        rows.append(
            {
                "image": str(item.path),
                "nme": 100.0 * photo_nme(recs[k].landmarks, item.landmarks),
                "nme_mean_face": 100.0 * photo_nme(base[k].landmarks, item.landmarks),
                "faces_detected": len(recs) if all_faces else "largest",
                "face_index": k,
                "yaw": item.yaw,
                "yaw_bin": yaw_bin_name(item.yaw),
            }
        )
    rows.sort(key=lambda r: str(r["image"]))
    scored = [r for r in rows if "nme" in r]
    m = float(np.mean([r["nme"] for r in scored])) if scored else float("nan")
    m0 = float(np.mean([r["nme_mean_face"] for r in scored])) if scored else float("nan")
    return {
        "images": rows,
        "mean": m,
        "mean_mean_face": m0,
        "ratio": m / m0 if scored and m0 > 0 else float("nan"),
        "better_than_mean_face": int(sum(r["nme"] < r["nme_mean_face"] for r in scored)),
        "count": len(scored),
        "skipped": [r for r in rows if "skipped" in r],
        "yaw_bins": {"checkpoint": binned_nme(scored, "nme"), "mean_face": binned_nme(scored, "nme_mean_face")},
        "protocol": {
            "nme": "68 points, original-image pixels, / sqrt(w*h) of the ground-truth landmark box, percent",
            "alignment": f"detector {detector}, landmarks {landmarks}, 5-point similarity (no ground truth)",
            "fit": "checkpoint column: 3DMM fitting to MediaPipe's dense landmarks" if fit else "none",
            "flip_average": "checkpoint column: coefficients averaged over the crop and its mirror image "
            + ("(every group)" if trained.mirror is not None else "(pose only: the mesh is not mirror-symmetric)")
            if flip_average
            else "none",
            "clamp_expressions": "checkpoint column: blendshape weights clamped to [0, 1]"
            if clamp_expressions and trained.face_model.exp_kind == "blendshape"
            else "none",
            "yaw_bins": "absolute Pose_Para yaw of AFLW-style .mat files, binned as msma eval --data aflw2000_3d "
            "(<= 30, <= 60, above, degrees); balanced = mean over the bins present",
            "face_choice": "the largest detection (as msma reconstruct); if its box centre is farther than half the "
            "annotated box size from the annotated face's, the nearest of all detections",
            "pts": "1-based pixel coordinates (iBUG/menpo), converted to 0-based",
            "image_size": trained.image_size,
            "checkpoint": trained.checkpoint,
        },
    }
