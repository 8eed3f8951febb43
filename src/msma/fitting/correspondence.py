"""Dense correspondence from MediaPipe's face mesh to a face model's surface, computed once and cached.

MediaPipe's 468 mesh vertices are points on the face's surface; fitting needs, for each of them, the point of
the face model's surface that marks the same place. It is found by registering MediaPipe's canonical face (the
mesh inside ``face_landmarker.task``, :func:`msma.data.mediapipe_mesh.read_canonical_mesh`) to the model's mean
face:

1. a similarity (Umeyama 1991, no reflection) from the canonical face (cm -> mm) to the mean face, fitted on the
   51 inner iBUG landmarks and the chin (8), which both meshes mark at the same places (MediaPipe through
   :data:`MEDIAPIPE_TO_68`, the model through its ``landmark_idx``); the other jaw points are left out:
   MediaPipe's are on its face oval, the model's on the jaw line;
2. a thin-plate-spline warp taking those 52 transformed points exactly onto the model's (scipy's
   ``RBFInterpolator``), applied to all 468 vertices, which removes the difference in face proportions;
3. each warped vertex projected on the nearest rendered skin triangle of the mean face (exact point-to-triangle
   distance over the 32 triangles with the nearest centroids); stored as triangle + barycentric weights so it
   follows the model's identity and expression.

The result depends only on the two assets; it is cached as ``$MSMA_HOME/fitting/mp468_<model>_<bundle>.npz``
(written atomically), never committed (the ICT and MediaPipe assets are fetched at run time).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from msma.data.mediapipe_mesh import MEDIAPIPE_TO_68, NUM_MESH, CanonicalMesh, read_canonical_mesh
from msma.face_model.model import FaceModel
from msma.utils.geometry import umeyama

log = logging.getLogger(__name__)

#: Version of the recipe above; part of the cache name.
CORRESPONDENCE_VERSION = 2
#: Vertices with a skin weight below this are not skin (eyeballs, mouth interior) and receive no point.
SKIN_THRESHOLD = 0.05
#: A face-oval point is held by its fixed surface point when that point faces the camera (normal z above this) ...
OVAL_FIXED_NZ = 0.3
#: ... fading to 0 over this range of normal z (below: the oval point is on the silhouette, not that skin point).
OVAL_FADE = 0.3


def oval_visibility(normal_z: Tensor, oval: Tensor) -> Tensor:
    """Weight of each dense point as a fixed-surface-point target: 1 off MediaPipe's face oval; on it
    ``clamp((n_z - OVAL_FIXED_NZ) / OVAL_FADE, 0, 1)``.

    MediaPipe's face-oval points follow the visible silhouette, not fixed skin points: one marks the model's
    surface point only while that point faces the camera (the fitter gives the rest of its weight to a contour
    term; the training loss leaves it out).

    Args:
        normal_z: (..., 468) z of each dense point's unit surface normal in the camera-aligned model frame (z
            towards the camera).
        oval: (468,) bool, the face-oval points (:data:`~msma.data.mediapipe_mesh.FACE_OVAL`).

    Returns:
        (..., 468) weights in [0, 1].
    """
    w_oval = ((normal_z - OVAL_FIXED_NZ) / OVAL_FADE).clamp(0.0, 1.0)
    return torch.where(oval.to(normal_z.device), w_oval, torch.ones_like(normal_z))


@dataclass(frozen=True)
class DenseCorrespondence:
    """MediaPipe mesh vertex -> face-model surface point.

    Attributes:
        vertex_idx: (468, 3) int64 model vertices of the triangle each MediaPipe vertex lands on.
        bary: (468, 3) float32 barycentric weights in that triangle (rows sum to 1).
        residual_mm: (468,) float32 distance from the warped canonical vertex to its surface point, mm.
    """

    vertex_idx: np.ndarray
    bary: np.ndarray
    residual_mm: np.ndarray

    def points(self, vertices: Tensor) -> Tensor:
        """(B, N, 3) model vertices -> (B, 468, 3) corresponding surface points (differentiable)."""
        idx = torch.as_tensor(self.vertex_idx, device=vertices.device)
        w = torch.as_tensor(self.bary, device=vertices.device, dtype=vertices.dtype)
        return (vertices[:, idx] * w[None, :, :, None]).sum(dim=2)


def closest_points_on_triangles(
    points: np.ndarray, vertices: np.ndarray, triangles: np.ndarray, candidates: int = 32
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest surface point of a triangle mesh for each query point.

    Args:
        points: (Q, 3) queries.
        vertices: (N, 3) mesh vertices.
        triangles: (F, 3) vertex indices.
        candidates: triangles examined per query (those with the nearest centroids).

    Returns:
        triangle index (Q,), barycentric weights (Q, 3), distance (Q,).
    """
    from scipy.spatial import cKDTree

    tri_v = vertices[triangles]  # (F, 3, 3)
    k = min(candidates, len(triangles))
    _, cand = cKDTree(tri_v.mean(1)).query(points, k=k)
    cand = np.asarray(cand).reshape(len(points), k)
    a, b, c = (tri_v[cand][:, :, i] for i in range(3))  # (Q, k, 3)
    p = points[:, None, :]
    bary = _closest_barycentric(p, a, b, c)
    proj = bary[..., 0:1] * a + bary[..., 1:2] * b + bary[..., 2:3] * c
    dist = np.linalg.norm(proj - p, axis=-1)
    best = dist.argmin(1)
    rows = np.arange(len(points))
    return cand[rows, best], bary[rows, best], dist[rows, best]


def _closest_barycentric(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Barycentric weights of the closest point of triangles (a, b, c) to p (Ericson, Real-Time Collision
    Detection, 5.1.5), vectorised: the face region when the projection is inside, else the best edge point."""
    ab, ac = b - a, c - a
    n = np.cross(ab, ac)
    nn = np.maximum((n * n).sum(-1, keepdims=True), 1e-20)
    q = p - a - ((p - a) * n).sum(-1, keepdims=True) * n / nn  # projection onto the plane, relative to a
    q = q + a
    # barycentric of the in-plane projection
    v0, v1, v2 = ab, ac, q - a
    d00, d01, d11 = (v0 * v0).sum(-1), (v0 * v1).sum(-1), (v1 * v1).sum(-1)
    d20, d21 = (v2 * v0).sum(-1), (v2 * v1).sum(-1)
    den = np.maximum(d00 * d11 - d01 * d01, 1e-20)
    v = (d11 * d20 - d01 * d21) / den
    w = (d00 * d21 - d01 * d20) / den
    u = 1.0 - v - w
    inside = (u >= 0) & (v >= 0) & (w >= 0)
    out = np.stack([u, v, w], -1)
    # edges: closest point on each segment, keep the nearest
    best_bary = np.zeros_like(out)
    best_d = np.full(u.shape, np.inf)
    for i, j in ((0, 1), (1, 2), (2, 0)):
        pi, pj = (a, b, c)[i], (a, b, c)[j]
        e = pj - pi
        t = np.clip(((p - pi) * e).sum(-1) / np.maximum((e * e).sum(-1), 1e-20), 0.0, 1.0)
        pt = pi + t[..., None] * e
        d = np.linalg.norm(pt - p, axis=-1)
        better = d < best_d
        cand = np.zeros_like(out)
        cand[..., i] = 1.0 - t
        cand[..., j] = t
        best_bary = np.where(better[..., None], cand, best_bary)
        best_d = np.where(better, d, best_d)
    return np.where(inside[..., None], out, best_bary)


def register_canonical(canonical: CanonicalMesh, face_model: FaceModel) -> DenseCorrespondence:
    """Computes the correspondence (steps 1-3 of the module docstring)."""
    from scipy.interpolate import RBFInterpolator

    mean = face_model.mean_shape.detach().cpu().double().numpy()
    lmk = face_model.landmark_idx.cpu().numpy()
    src_all = canonical.vertices * 10.0  # cm -> mm
    inner = [8, *range(17, 68)]  # the chin and the 51 inner points mark the same places on both meshes
    src = src_all[[MEDIAPIPE_TO_68[i] for i in inner]]
    dst = mean[lmk[inner]]
    s, rot, t = umeyama(src, dst)
    moved = src_all @ (s * rot).T + t
    disp = RBFInterpolator(
        moved[[MEDIAPIPE_TO_68[i] for i in inner]],
        dst - moved[[MEDIAPIPE_TO_68[i] for i in inner]],
        kernel="thin_plate_spline",
        smoothing=1.0,
    )
    warped = moved + disp(moved)
    tri = face_model.tri.cpu().numpy()
    skin = face_model.skin_mask.cpu().numpy()
    keep = (skin[tri] > SKIN_THRESHOLD).all(1)
    tri = tri[keep]
    tid, bary, dist = closest_points_on_triangles(warped, mean, tri)
    return DenseCorrespondence(tri[tid].astype(np.int64), bary.astype(np.float32), dist.astype(np.float32))


def correspondence_cache_path(face_model: FaceModel, task_path: Path, home: Path | None = None) -> Path:
    from msma.face_model.assets import msma_home, sha256_file

    home = msma_home() if home is None else home
    return (
        home
        / "fitting"
        / (
            f"mp468_{face_model.name}-{face_model.fingerprint()}_{sha256_file(task_path)[:12]}_v{CORRESPONDENCE_VERSION}.npz"
        )
    )


def load_correspondence(face_model: FaceModel, task_path: str | os.PathLike[str] | None = None) -> DenseCorrespondence:
    """The cached correspondence for this model and bundle, computing and caching it when missing or unreadable."""
    from msma.data.mediapipe_asset import find_face_landmarker
    from msma.utils.files import atomic_write

    task = find_face_landmarker(task_path)
    path = correspondence_cache_path(face_model, task)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                corr = DenseCorrespondence(data["vertex_idx"], data["bary"], data["residual_mm"])
            if corr.vertex_idx.shape == (NUM_MESH, 3) and corr.vertex_idx.max() < face_model.n_vertices:
                return corr
        except (OSError, ValueError, KeyError) as exc:
            log.warning("%s: unreadable correspondence cache (%s); recomputing", path, exc)
    corr = register_canonical(read_canonical_mesh(task), face_model)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, vertex_idx=corr.vertex_idx, bary=corr.bary, residual_mm=corr.residual_mm)

    atomic_write(path, write)
    return corr
