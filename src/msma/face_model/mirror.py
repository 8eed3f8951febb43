"""The coefficients of a face's mirror image: every group, for test-time flip averaging.

Mirroring a crop about its vertical centre line is ``M = diag(-1, 1, 1)`` in the model/camera frame (the camera's
principal point is the crop centre). For a linear face model on a mirror-symmetric mesh (each vertex ``i`` has a
partner ``m(i)`` at ``M v_i``):

* **pose**: ``(pitch, -yaw, -roll)`` and ``(-tx, ty, tz)`` (:func:`msma.face_model.params.mirror_pose`), exact;
* **identity / expression**: the mirrored deformation ``(M B c)[m]``, projected onto the basis by least squares:
  ``c' = P c`` with ``P = B^+ (M B)[m]``; exact when the basis is closed under mirroring (ICT-FaceKit's left/right
  blendshapes are mirror pairs; its identity PCA is symmetric up to 0.4 % of its displacement), otherwise the
  nearest mirrored deformation the model can express. The mean shape is taken as symmetric (ICT-FaceKit's is to
  0.01 mm): its own residual asymmetry belongs to the model, not to the face, so zero coefficients map to zero and
  the mean face's flip average is the mean face;
* **albedo**: the same with the colour basis (colours are not negated; the mean albedo taken as symmetric);
* **light**: the SH basis functions odd in x (Deep3D's order: ``x``, ``xy``, ``xz``, indices 3, 4, 7 of each
  channel) change sign, the others are kept (:data:`SH_MIRROR_SIGNS`); exact.

:class:`CoefficientMirror` precomputes the maps once per face model (a few least-squares solves, well under a
second for ICT-FaceKit's 100 + 53 + 20 coefficients); :meth:`CoefficientMirror.from_face_model` returns None for a
mesh that is not mirror-symmetric (fewer than 90 % of the vertices with a partner within ``tol_mm``), and the
flip averaging then falls back to the pose alone.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from msma.face_model.landmark_convention import mirror_vertices
from msma.face_model.model import FaceModel
from msma.face_model.params import FaceParams, mirror_pose

#: Sign of each of the 9 SH coefficients of a colour channel under ``x -> -x`` (Deep3D's basis order
#: 1, y, z, x, xy, yz, 3z^2 - 1, xz, x^2 - y^2; :func:`msma.face_model.shading.sh_basis`).
SH_MIRROR_SIGNS: tuple[float, ...] = (1.0, 1.0, 1.0, -1.0, -1.0, 1.0, 1.0, -1.0, 1.0)
#: Default partner tolerance in mm (ICT-FaceKit is symmetric to float precision; BFM to a fraction of its spacing).
MIRROR_TOL_MM = 0.5


def _mirror_map(basis: np.ndarray, partner: np.ndarray, negate_x: bool) -> tuple[np.ndarray, float]:
    """Least-squares coefficient map of the mirrored basis.

    Args:
        basis: (N, 3, K) basis, float64.
        partner: (N,) mirror vertex of each vertex, -1 for none (those rows are left out of the fit).
        negate_x: shapes (x negated) or colours (kept).

    Returns:
        ``(P (K, K), relative residual)`` with ``c' = P c``; the residual is ``|B P - (M B)[m]| / |(M B)[m]|``
        over the rows fitted (0: the mirror is exact).
    """
    k = basis.shape[2]
    if k == 0:
        return np.zeros((0, 0)), 0.0
    rows = partner >= 0
    sign = np.array([-1.0, 1.0, 1.0]) if negate_x else np.ones(3)
    b = basis[rows].reshape(-1, k)
    mb = (basis[partner[rows]] * sign[None, :, None]).reshape(-1, k)
    p, *_ = np.linalg.lstsq(b, mb, rcond=None)
    norm = float(np.linalg.norm(mb))
    residual = float(np.linalg.norm(b @ p - mb)) / norm if norm > 0 else 0.0
    return p, residual


class CoefficientMirror:
    """Maps a batch of coefficients to those of the faces' mirror images (see the module docstring).

    Build with :meth:`from_face_model`. Call with :class:`FaceParams` (any device / float dtype).

    Attributes:
        maps: ``{"id" | "exp" | "tex": (K, K) P}`` float64 tensors, ``c' = c @ P.T``.
        residual: relative least-squares residual of each map (0 = exact; see :func:`_mirror_map`).
        matched: fraction of vertices with a mirror partner.
    """

    def __init__(self, maps: dict[str, Tensor], residual: dict[str, float], matched: float) -> None:
        self.maps = maps
        self.residual = residual
        self.matched = matched

    @classmethod
    def from_face_model(cls, face_model: FaceModel, tol_mm: float = MIRROR_TOL_MM) -> CoefficientMirror | None:
        """The mirror maps of ``face_model``, or None when its mean shape is not mirror-symmetric about x = 0."""
        mean = face_model.mean_shape.detach().double().cpu().numpy()
        partner = mirror_vertices(mean, tol_mm=tol_mm)
        if partner is None:
            return None
        maps: dict[str, Tensor] = {}
        residual: dict[str, float] = {}
        groups = (
            ("id", face_model.id_basis, True),
            ("exp", face_model.exp_basis, True),
            ("tex", face_model.albedo_basis, False),
        )
        for name, basis, negate_x in groups:
            p, res = _mirror_map(basis.detach().double().cpu().numpy(), partner, negate_x)
            maps[name] = torch.from_numpy(p)
            residual[name] = res
        return cls(maps, residual, float((partner >= 0).mean()))

    def __call__(self, params: FaceParams) -> FaceParams:
        """The coefficients of the mirror images of ``params``' faces, (B, ...) per group as ``params``."""
        out = mirror_pose(params)
        changes: dict[str, Tensor] = {}
        for name, p in self.maps.items():
            c: Tensor = getattr(params, name)
            changes[name] = c @ p.to(c).T
        signs = params.sh.new_tensor(SH_MIRROR_SIGNS * 3)  # channel-major (B, 3 * 9): FaceParams checks the shape
        changes["sh"] = params.sh * signs
        return out.replace(**changes)

    def average(self, params: FaceParams, mirrored_image_params: FaceParams) -> FaceParams:
        """The mean of each face's coefficients and the mirrored coefficients predicted for its mirror image."""
        m = self(mirrored_image_params)
        return FaceParams(**{g: 0.5 * (t + getattr(m, g)) for g, t in params.items()})
