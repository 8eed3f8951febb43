"""Dense-landmark loss: the face model's surface points under MediaPipe's 468 mesh vertices against MediaPipe's
dense landmarks of a photo (``msma prepare --landmarks mediapipe`` caches them; ``FaceBatch.dense``).

For each prediction, the 468 surface points of :class:`~msma.fitting.correspondence.DenseCorrespondence` (a
triangle + barycentric weights per MediaPipe vertex, registered once per face model and bundle) are taken from the
posed vertices and projected with the face model's camera into crop pixels; the residual to the target's x, y is
robustified (Geman-McClure, as the fitter's landmark energy: ``r^2 / (1 + r^2 / c^2)`` with ``r`` in pixels of a
224 crop, so a point far off costs at most ``c^2``). Per-point weights:

* 0 for correspondence points further than ``max_residual_mm`` from MediaPipe's canonical vertex (where the two
  meshes do not mark the same place);
* on MediaPipe's face oval, :func:`~msma.fitting.correspondence.oval_visibility` of the predicted surface normal
  (the fitter's rule): an oval point follows the silhouette, so it pulls its fixed surface point only as far as
  that point faces the camera, and not at all once it turns away (the fitter's contour term is not used here);
* the 10 iris points and non-finite target points (the iris after a flip) are not used.

Each supervised row contributes its weighted mean over points; the term is the sum over the rows that carry the
target divided by their number (``dense_valid``), like every other term. MediaPipe's relative depth (z) is not
used.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from msma.data.mediapipe_mesh import FACE_OVAL, NUM_MESH
from msma.face_model.camera import PerspectiveCamera
from msma.face_model.model import FaceModel
from msma.fitting.correspondence import DenseCorrespondence, oval_visibility

#: Image size the pixel residuals are measured at (as the landmark term's calibration).
REFERENCE_SIZE = 224
#: Geman-McClure scale, pixels of a 224 crop (the fitter's ``robust_px``).
ROBUST_PX = 6.0
#: Correspondence points further than this from MediaPipe's canonical vertex are not used, mm (the fitter's).
MAX_RESIDUAL_MM = 6.0


class DenseLandmarkLoss(nn.Module):
    """Robust masked reprojection loss of the face model's points under MediaPipe's mesh.

    Args:
        correspondence: MediaPipe vertex -> surface point of the training face model.
        camera: the face model's camera (the projection of ``FaceOutput.landmarks_2d``).
        robust_px: Geman-McClure scale in pixels of a 224 crop.
        max_residual_mm: correspondence points with a larger registration residual get weight 0.
    """

    vertex_idx: Tensor
    bary: Tensor
    base_weight: Tensor
    oval: Tensor

    def __init__(
        self,
        correspondence: DenseCorrespondence,
        camera: PerspectiveCamera,
        robust_px: float = ROBUST_PX,
        max_residual_mm: float = MAX_RESIDUAL_MM,
    ) -> None:
        super().__init__()
        if correspondence.vertex_idx.shape != (NUM_MESH, 3) or correspondence.bary.shape != (NUM_MESH, 3):
            raise ValueError(
                f"the correspondence must map {NUM_MESH} points, got {correspondence.vertex_idx.shape} / "
                f"{correspondence.bary.shape}"
            )
        if not robust_px > 0:
            raise ValueError(f"robust_px must be > 0, got {robust_px}")
        self.camera = camera
        self.robust_px = float(robust_px)
        self.register_buffer("vertex_idx", torch.as_tensor(correspondence.vertex_idx, dtype=torch.int64), False)
        self.register_buffer("bary", torch.as_tensor(correspondence.bary, dtype=torch.float32), False)
        residual = torch.as_tensor(correspondence.residual_mm, dtype=torch.float32)
        self.register_buffer("base_weight", (residual <= max_residual_mm).to(torch.float32), False)
        oval = torch.zeros(NUM_MESH, dtype=torch.bool)
        oval[list(FACE_OVAL)] = True
        self.register_buffer("oval", oval, False)

    @classmethod
    def from_face_model(
        cls, face_model: FaceModel, task_path: str | os.PathLike[str] | None = None, **kwargs: float
    ) -> DenseLandmarkLoss:
        """The loss for ``face_model``: its correspondence (:func:`~msma.fitting.correspondence.load_correspondence`,
        cached under ``$MSMA_HOME/fitting``) and camera.

        Raises:
            AssetError: MediaPipe's ``face_landmarker.task`` (whose canonical mesh the correspondence is registered
                from) cannot be found; the message says what the term needs and where the bundle was looked for.
        """
        from msma.face_model.assets import AssetError
        from msma.fitting.correspondence import load_correspondence

        try:
            corr = load_correspondence(face_model, task_path)
        except (AssetError, FileNotFoundError) as exc:
            raise AssetError(
                f"loss.w_dense > 0: the dense-landmark term maps MediaPipe's mesh onto the {face_model.name!r} face "
                f"model through the canonical face inside face_landmarker.task, which is not available ({exc}). "
                "Provide it or set loss.w_dense=0."
            ) from exc
        return cls(corr, face_model.camera, **kwargs)

    def surface_points(self, vertices: Tensor) -> Tensor:
        """(B, N, 3) posed vertices -> (B, 468, 3) the surface points under MediaPipe's vertices."""
        w = self.bary.to(vertices.dtype)
        return (vertices[:, self.vertex_idx] * w[None, :, :, None]).sum(dim=2)

    def point_weights(self, normals: Tensor) -> Tensor:
        """(B, N, 3) posed unit vertex normals -> (B, 468) per-point weights (no gradient)."""
        with torch.no_grad():
            n = torch.nn.functional.normalize(self.surface_points(normals), dim=-1)
            return self.base_weight.to(n.dtype) * oval_visibility(n[..., 2], self.oval)

    def forward(self, vertices: Tensor, normals: Tensor, target: Tensor, valid: Tensor, image_size: int) -> Tensor:
        """The term over the rows that carry a dense target.

        Args:
            vertices: (B, N, 3) predicted posed vertices, mm (``FaceOutput.vertices``).
            normals: (B, N, 3) their unit normals (``FaceOutput.normals``).
            target: (B, K, >=2) dense landmarks in crop pixels, K >= 468 (the first 468 are used); NaN where unknown.
            valid: (B,) bool, the rows that carry the target (``FaceBatch.dense_valid``).
            image_size: crop side S in pixels.

        Returns:
            Scalar: ``sum_{b valid} (sum_k w_bk rho_bk / sum_k w_bk) / n_valid``, ``rho`` the Geman-McClure
            residual in squared pixels of a 224 crop; 0 (connected to ``vertices``) when no row is valid.
        """
        b = int(vertices.shape[0])
        if target.ndim != 3 or target.shape[0] != b or target.shape[1] < NUM_MESH or target.shape[2] < 2:
            raise ValueError(f"dense targets must be (B={b}, >={NUM_MESH}, >=2), got {tuple(target.shape)}")
        if valid.shape != (b,):
            raise ValueError(f"dense valid flags must be ({b},), got {tuple(valid.shape)}")
        pts = self.surface_points(vertices)
        proj = self.camera.project(pts, image_size)  # (B, 468, 2)
        tgt = target[:, :NUM_MESH, :2].to(proj.dtype)
        rows = valid.to(device=proj.device, dtype=torch.bool)
        ok = torch.isfinite(tgt).all(dim=-1) & rows[:, None]  # (B, 468)
        w = self.point_weights(normals).to(proj.dtype) * ok.to(proj.dtype)
        clean = torch.where(ok[..., None], tgt, proj.detach())
        r2 = ((proj - clean) ** 2).sum(dim=-1) * (REFERENCE_SIZE / image_size) ** 2
        rho = r2 / (1.0 + r2 / self.robust_px**2)
        per_row = (w * rho).sum(dim=1) / w.sum(dim=1).clamp_min(1e-6)
        n_rows = rows.sum().clamp_min(1).to(proj.dtype)
        return (per_row * rows.to(proj.dtype)).sum() / n_rows
