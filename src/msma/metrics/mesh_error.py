"""Reconstruction error against a 3D scan: MICC Florence (GANFit / Deep3D) and NoW-style protocols.

Everything here is in **millimetres** and works on NumPy float64 arrays (the geometry is small, exactness
matters more than speed, and it runs the same under DDP on every rank).

Protocol (:func:`scan_error`), following Deep3DFaceRecon §5.1 and GANFit §5.2 for MICC Florence and the NoW
benchmark (Sanyal et al. 2019) for the scan-to-mesh statistics:

1. The scan is cropped to the vertices within ``crop_radius`` (95 mm) of its nose tip.
2. The predicted mesh is aligned to the scan by a rigid (optionally similarity) least-squares fit of
   corresponding landmarks (Umeyama 1991), then refined by point-to-plane ICP: every cropped scan vertex is
   matched to its closest point on the predicted *surface* (:func:`icp_to_surface`).
3. Distances are exact point-to-triangle distances (:class:`SurfaceQuery`): cropped scan vertices -> aligned
   predicted surface (the NoW "scan-to-mesh" direction; median / mean / std), and aligned predicted vertices
   inside the same sphere -> the (whole) scan surface, or the nearest scan vertex when the scan is a point
   cloud. The symmetric RMSE is ``sqrt((mean(d_scan->pred^2) + mean(d_pred->scan^2)) / 2)``: each direction
   weighs half, whatever the vertex densities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor
from torchmetrics import Metric

from msma.data.landmark_index import NOSE_TIP
from msma.metrics.surface import (
    FloatArray,
    IntArray,
    SimilarityTransform,
    SurfaceQuery,
    as_faces,
    as_points,
    closest_points_on_triangles,
    crop_mesh,
    crop_points,
    fit_similarity,
    icp_to_surface,
)

__all__ = [
    "MICC_CROP_RADIUS_MM",
    "NOW_LANDMARKS_68",
    "NOW_NOSE",
    "MeshError",
    "MeshErrorSummary",
    "ScanError",
    "SimilarityTransform",
    "SurfaceQuery",
    "closest_points_on_triangles",
    "crop_mesh",
    "crop_points",
    "fit_similarity",
    "icp_to_surface",
    "scan_error",
]

#: MICC Florence crop radius around the nose tip in mm (GANFit / Deep3DFaceRecon evaluation).
MICC_CROP_RADIUS_MM = 95.0
#: 68-point (iBUG) indices of the 7 NoW landmarks, in NoW's order: right-eye outer/inner corners,
#: left-eye inner/outer corners, nose tip, right and left mouth corners (NoW ``*_picked_points.pp``).
NOW_LANDMARKS_68: tuple[int, ...] = (36, 39, 42, 45, 33, 48, 54)
#: Index of the nose (68-point 33, the nose's lowest centre point) among NoW's 7 landmarks.
NOW_NOSE = NOW_LANDMARKS_68.index(33)


@dataclass(frozen=True)
class ScanError:
    """Error of one predicted mesh against one scan, in mm.

    Attributes:
        rmse: symmetric point-to-surface RMSE (MICC Florence number).
        scan_to_mesh: (P,) distances of the cropped scan vertices to the aligned predicted surface (NoW).
        mesh_to_scan: (Q,) distances of the cropped aligned predicted vertices to the scan surface.
        transform: prediction -> scan transform found by landmarks + ICP.
        landmark_rmse: RMSE of the landmarks after the landmark-only fit (a sanity check of correspondence).
    """

    rmse: float
    scan_to_mesh: FloatArray
    mesh_to_scan: FloatArray
    transform: SimilarityTransform
    landmark_rmse: float

    @property
    def median(self) -> float:
        return float(np.median(self.scan_to_mesh))

    @property
    def mean(self) -> float:
        return float(self.scan_to_mesh.mean())

    @property
    def std(self) -> float:
        return float(self.scan_to_mesh.std())


def scan_error(
    pred_vertices: FloatArray | Tensor,
    pred_faces: IntArray | Tensor,
    pred_landmarks: FloatArray | Tensor,
    scan_vertices: FloatArray | Tensor,
    scan_faces: IntArray | Tensor | None,
    scan_landmarks: FloatArray | Tensor,
    nose_tip: FloatArray | Tensor | None = None,
    crop_radius: float = MICC_CROP_RADIUS_MM,
    with_scale: bool = False,
    icp_iterations: int = 50,
) -> ScanError:
    """Aligns a predicted mesh to a scan and measures the distances between them (module docstring).

    Args:
        pred_vertices: (V, 3) predicted vertices in mm (any rigid frame).
        pred_faces: (F, 3) triangles of the prediction.
        pred_landmarks: (K, 3) predicted landmark positions in mm, same frame as ``pred_vertices``.
        scan_vertices: (S, 3) scan vertices in mm.
        scan_faces: (G, 3) scan triangles, or None for a point cloud.
        scan_landmarks: (K, 3) the corresponding landmarks on the scan, mm.
        nose_tip: (3,) crop centre on the scan in mm; default: the nose-tip scan landmark (68-point index 30
            when K == 68, NoW's index 4 when K == 7; otherwise it must be given).
        crop_radius: crop radius in mm (95 for MICC).
        with_scale: allow an isotropic scale in the alignment (NoW style, for predictions of unknown scale).
        icp_iterations: maximum ICP iterations (0 = landmarks only).

    Returns:
        :class:`ScanError`.

    Raises:
        ValueError: malformed inputs, or no scan vertex within ``crop_radius`` of the nose tip (landmarks that are
            not on the scan).
    """
    pv = as_points("pred_vertices", pred_vertices)
    pf = as_faces("pred_faces", pred_faces, pv.shape[0])
    plm = as_points("pred_landmarks", pred_landmarks)
    sv = as_points("scan_vertices", scan_vertices)
    sf = None if scan_faces is None else as_faces("scan_faces", scan_faces, sv.shape[0])
    slm = as_points("scan_landmarks", scan_landmarks)
    if plm.shape != slm.shape:
        raise ValueError(f"pred_landmarks {plm.shape} and scan_landmarks {slm.shape} do not correspond")
    if nose_tip is None:
        if slm.shape[0] == 68:
            tip = slm[NOSE_TIP]
        elif slm.shape[0] == len(NOW_LANDMARKS_68):
            tip = slm[NOW_NOSE]
        else:
            raise ValueError(f"pass nose_tip: cannot tell which of {slm.shape[0]} scan landmarks is the nose tip")
    else:
        tip = as_points("nose_tip", np.asarray(nose_tip, dtype=np.float64).reshape(1, 3))[0]

    # Only surface points count: vertices no triangle uses (e.g. a face model's hidden parts, stray scan
    # points of a mesh) are left out of both point sets.
    scan_pts = sv if sf is None else sv[np.unique(sf)]
    scan_v, _ = crop_mesh(scan_pts, None, tip, crop_radius)
    init = fit_similarity(plm, slm, with_scale=with_scale)
    landmark_rmse = float(np.sqrt(((init.apply(plm) - slm) ** 2).sum(axis=1).mean()))
    pred_surface = SurfaceQuery(pv, pf)
    transform = icp_to_surface(scan_v, pred_surface, init, with_scale=with_scale, iterations=icp_iterations)

    scan_to_mesh, _, _ = pred_surface.query(transform.inverse().apply(scan_v))
    scan_to_mesh = scan_to_mesh * transform.scale  # distances measured in the scan's frame (mm)
    # Predicted vertices inside the crop sphere are measured against the whole scan surface, so the vertices
    # at the rim of the sphere are not pushed off the edge of the cropped scan.
    crop_v, _ = crop_mesh(transform.apply(pv[np.unique(pf)]), None, tip, crop_radius)
    if sf is not None:
        mesh_to_scan, _, _ = SurfaceQuery(sv, sf).query(crop_v)
    else:
        mesh_to_scan, _ = cKDTree(sv).query(crop_v)
        mesh_to_scan = np.asarray(mesh_to_scan, dtype=np.float64)
    rmse = float(np.sqrt(0.5 * (np.mean(scan_to_mesh**2) + np.mean(mesh_to_scan**2))))
    return ScanError(rmse, scan_to_mesh, mesh_to_scan, transform, landmark_rmse)


@dataclass(frozen=True)
class MeshErrorSummary:
    """Dataset-level scan errors in mm.

    Attributes:
        rmse_mean: mean over scans of the symmetric RMSE (MICC Florence's "mean +- std").
        rmse_std: standard deviation over scans of the RMSE.
        median: median of all scan-to-mesh distances pooled over scans (NoW).
        mean: mean of the pooled scan-to-mesh distances (NoW).
        std: standard deviation of the pooled scan-to-mesh distances (NoW).
        count: number of scans.
    """

    rmse_mean: float
    rmse_std: float
    median: float
    mean: float
    std: float
    count: int


class MeshError(Metric):
    """Accumulates :class:`ScanError` results; DDP-safe (states are concatenated across processes).

    ``update`` takes the per-scan RMSE and scan-to-mesh distances from :func:`scan_error` (the alignment runs
    outside, on NumPy, once per scan).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    rmse: list[Tensor]
    distances: list[Tensor]

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.add_state("rmse", default=[], dist_reduce_fx="cat")
        self.add_state("distances", default=[], dist_reduce_fx="cat")

    def update(self, result: ScanError) -> None:
        """Adds one scan's result."""
        self.rmse.append(torch.tensor([result.rmse], dtype=torch.float64, device=self.device))
        self.distances.append(torch.as_tensor(result.scan_to_mesh, dtype=torch.float64, device=self.device))

    @staticmethod
    def _cat(x: list[Tensor] | Tensor) -> Tensor:
        if isinstance(x, Tensor):
            return x.reshape(-1)
        return torch.cat(x) if x else torch.zeros(0, dtype=torch.float64)

    def compute(self) -> Tensor:
        """Mean symmetric RMSE over scans in mm (0-dim; NaN before any update)."""
        r = self._cat(self.rmse)
        return r.mean() if r.numel() else torch.tensor(float("nan"), dtype=torch.float64)

    def summary(self) -> MeshErrorSummary:
        """MICC and NoW statistics (synchronised across processes under DDP)."""
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self._to_sync, should_unsync=True):
            r = self._cat(self.rmse)
            d = self._cat(self.distances)
        nan = float("nan")
        return MeshErrorSummary(
            rmse_mean=float(r.mean()) if r.numel() else nan,
            rmse_std=float(r.std(unbiased=False)) if r.numel() else nan,
            median=float(np.median(d.cpu().numpy())) if d.numel() else nan,
            mean=float(d.mean()) if d.numel() else nan,
            std=float(d.std(unbiased=False)) if d.numel() else nan,
            count=int(r.numel()),
        )
