"""Scan benchmarks (MICC Florence, NoW): each photo's reconstruction against its subject's scan.

Layouts: :mod:`msma.data.scans`; the error (landmark alignment, ICP, symmetric point-to-surface RMSE):
:mod:`msma.metrics.mesh_error`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from msma.data.scans import ScanItem, load_scan
from msma.metrics.mesh_error import MICC_CROP_RADIUS_MM, NOW_LANDMARKS_68, MeshError, ScanError, scan_error
from msma.utils.progress import progress_bar

log = logging.getLogger(__name__)


def evaluate_scans(
    reconstructor: Any,
    items: Sequence[ScanItem],
    with_scale: bool,
    crop_radius: float,
    batch_size: int,
    skipped: Sequence[dict[str, str]] = (),
) -> dict[str, Any]:
    """Reconstructs each image and measures its canonical mesh against the subject's scan.

    An image without a face, whose scan cannot be read (:func:`~msma.data.scans.load_scan`: ``bad_scan``) or
    cannot be compared (``scan_error``) is left out and listed under ``skipped`` with its reason, after
    ``skipped`` (what the layout reader left out, :attr:`~msma.data.scans.ScanLayout.skipped`); the rest is scored.
    """
    metric = MeshError()
    per_subject: dict[str, list[float]] = {}
    skipped = list(skipped)
    bad_scans: dict[Path, str] = {}
    face_model = reconstructor.face_model
    tri = face_model.tri.detach().cpu().numpy()
    lm_idx = face_model.landmark_idx.detach().cpu().numpy()
    scans: dict[Path, tuple[np.ndarray, np.ndarray | None, float]] = {}
    chunks = [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    for chunk in progress_bar(chunks, total=len(chunks), desc="scans", unit="batch"):
        results = reconstructor.reconstruct_many([str(it.image) for it in chunk], batch_size=batch_size)
        for item, res in zip(chunk, results):
            if isinstance(res, str):
                skipped.append({"image": str(item.image), "reason": res})
                continue
            if item.scan not in scans and item.scan not in bad_scans:
                try:
                    scans[item.scan] = load_scan(item.scan)
                except ValueError as exc:
                    bad_scans[item.scan] = f"bad_scan: {exc}"
                    log.warning("%s: skipped (%s)", item.scan, exc)
            if item.scan in bad_scans:
                skipped.append({"image": str(item.image), "reason": bad_scans[item.scan]})
                continue
            sv, sf, factor = scans[item.scan]
            verts = res[0].vertices_canonical.double().numpy()
            pred_lm = verts[lm_idx]
            if item.landmarks.shape[0] == len(NOW_LANDMARKS_68):
                pred_lm = pred_lm[list(NOW_LANDMARKS_68)]
            try:
                err: ScanError = scan_error(
                    verts, tri, pred_lm, sv, sf, item.landmarks * factor, crop_radius=crop_radius, with_scale=with_scale
                )
            except ValueError as exc:  # e.g. no scan vertex within the crop radius of its nose tip
                skipped.append({"image": str(item.image), "reason": f"scan_error: {item.scan}: {exc}"})
                continue
            metric.update(err)
            per_subject.setdefault(item.subject, []).append(err.rmse)
    s = metric.summary()
    subject_means = {k: float(np.mean(v)) for k, v in sorted(per_subject.items())}
    return {
        "rmse_mm": s.rmse_mean,
        "rmse_std_mm": s.rmse_std,
        "scan_to_mesh_median_mm": s.median,
        "scan_to_mesh_mean_mm": s.mean,
        "scan_to_mesh_std_mm": s.std,
        "count": s.count,
        "per_subject_rmse_mm": subject_means,
        "skipped": skipped,
        "protocol": {
            "crop_radius_mm": crop_radius,
            "micc_default_crop_mm": MICC_CROP_RADIUS_MM,
            "alignment": ("similarity" if with_scale else "rigid") + " by landmarks, then point-to-plane ICP",
            "rmse": "symmetric point-to-surface RMSE, each direction weighted half",
            "prediction": "canonical (unposed) mesh of the face model's rendered triangles",
        },
    }
