"""Geometry of the scan protocols, in millimetres on NumPy float64 arrays: similarity / rigid least-squares fits
(Umeyama 1991), exact closest points on triangles (Ericson, *Real-Time Collision Detection*, 5.1.5), a
point-to-surface query (:class:`SurfaceQuery`), crops around a point and point-to-plane ICP to a surface.

The protocol that uses them (MICC Florence, NoW) is :mod:`msma.metrics.mesh_error`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree
from torch import Tensor

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


def as_points(name: str, x: FloatArray | Tensor) -> FloatArray:
    arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    arr = arr.astype(np.float64, copy=False)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{name} must be (N, 3) points in mm, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds non-finite coordinates")
    return arr


def as_faces(name: str, faces: IntArray | Tensor, n_vertices: int) -> IntArray:
    arr = faces.detach().cpu().numpy() if isinstance(faces, Tensor) else np.asarray(faces)
    arr = arr.astype(np.int64, copy=False)
    if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (F, 3) triangle index array, got shape {arr.shape}")
    if arr.min() < 0 or arr.max() >= n_vertices:
        raise ValueError(f"{name} indexes vertices outside [0, {n_vertices})")
    return arr


@dataclass(frozen=True)
class SimilarityTransform:
    """``x -> scale * R @ x + t`` acting on (N, 3) points in mm.

    Attributes:
        rotation: (3, 3) proper rotation matrix.
        translation: (3,) translation in mm.
        scale: isotropic scale (1 for a rigid transform).
    """

    rotation: FloatArray = field(default_factory=lambda: np.eye(3))
    translation: FloatArray = field(default_factory=lambda: np.zeros(3))
    scale: float = 1.0

    def apply(self, points: FloatArray) -> FloatArray:
        """Transforms (N, 3) points."""
        return self.scale * points @ self.rotation.T + self.translation

    def inverse(self) -> SimilarityTransform:
        r_inv = self.rotation.T
        return SimilarityTransform(r_inv, -(r_inv @ self.translation) / self.scale, 1.0 / self.scale)

    def compose(self, first: SimilarityTransform) -> SimilarityTransform:
        """The transform that applies ``first`` and then ``self``."""
        return SimilarityTransform(
            self.rotation @ first.rotation,
            self.scale * self.rotation @ first.translation + self.translation,
            self.scale * first.scale,
        )


def fit_similarity(
    source: FloatArray, target: FloatArray, with_scale: bool = False, weights: FloatArray | None = None
) -> SimilarityTransform:
    """Least-squares rigid / similarity transform mapping ``source`` onto ``target`` (Umeyama 1991).

    Args:
        source: (K, 3) points in mm.
        target: (K, 3) corresponding points in mm.
        with_scale: also fit an isotropic scale.
        weights: optional (K,) non-negative weights.

    Returns:
        The transform ``T`` minimising ``sum w_k |T(source_k) - target_k|^2``.
    """
    src = as_points("source", source)
    dst = as_points("target", target)
    if src.shape != dst.shape or src.shape[0] < 3:
        raise ValueError(f"need >= 3 corresponding points, got source {src.shape} and target {dst.shape}")
    w = np.ones(src.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mu_s = w @ src
    mu_d = w @ dst
    s0 = src - mu_s
    d0 = dst - mu_d
    cov = (d0 * w[:, None]).T @ s0
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[2] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = 1.0
    if with_scale:
        var_s = float(w @ (s0**2).sum(axis=1))
        scale = float((sig * d).sum() / var_s)
    trans = mu_d - scale * rot @ mu_s
    return SimilarityTransform(rot, trans, scale)


def _dot(x: FloatArray, y: FloatArray) -> FloatArray:
    return np.einsum("...i,...i->...", x, y)


def _safe_div(num: FloatArray, den: FloatArray) -> FloatArray:
    return num / np.where(np.abs(den) > 1e-300, den, 1.0)


def closest_points_on_triangles(p: FloatArray, a: FloatArray, b: FloatArray, c: FloatArray) -> FloatArray:
    """Closest point to ``p`` on triangle ``(a, b, c)``, element-wise (Ericson, *Real-Time Collision
    Detection*, §5.1.5: Voronoi regions of vertices, edges and face).

    Args:
        p, a, b, c: (..., 3) broadcastable arrays.

    Returns:
        (..., 3) closest points.
    """
    ab, ac = b - a, c - a
    ap, bp, cp = p - a, p - b, p - c
    d1, d2 = _dot(ab, ap), _dot(ac, ap)
    d3, d4 = _dot(ab, bp), _dot(ac, bp)
    d5, d6 = _dot(ab, cp), _dot(ac, cp)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    # Interior (face region) first; each later region overrides, so Ericson's first matching test wins.
    denom = va + vb + vc
    v = _safe_div(vb, denom)[..., None]
    w = _safe_div(vc, denom)[..., None]
    out = a + ab * v + ac * w
    shape = out.shape
    e_bc = (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0)
    t_bc = _safe_div(d4 - d3, (d4 - d3) + (d5 - d6))[..., None]
    out = np.where(e_bc[..., None], b + (c - b) * t_bc, out)
    e_ac = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
    out = np.where(e_ac[..., None], a + ac * _safe_div(d2, d2 - d6)[..., None], out)
    out = np.where(((d6 >= 0) & (d5 <= d6))[..., None], np.broadcast_to(c, shape), out)
    e_ab = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
    out = np.where(e_ab[..., None], a + ab * _safe_div(d1, d1 - d3)[..., None], out)
    out = np.where(((d3 >= 0) & (d4 <= d3))[..., None], np.broadcast_to(b, shape), out)
    out = np.where(((d1 <= 0) & (d2 <= 0))[..., None], np.broadcast_to(a, shape), out)
    return out


class SurfaceQuery:
    """Exact closest-point queries on a triangle mesh.

    For each point, the exact distance to the triangles of the 4 nearest centroids gives an upper bound ``d``;
    any triangle ``f`` closer than ``d`` has its centroid within ``d + radius_f`` (``radius_f``: centroid to
    farthest vertex), so a KD-tree ball query over the centroids (radius ``d + max radius``, then filtered by
    each triangle's own radius) yields every candidate, and the minimum over them is exact.

    Args:
        vertices: (V, 3) in mm.
        faces: (F, 3) triangle vertex indices.
    """

    def __init__(self, vertices: FloatArray | Tensor, faces: IntArray | Tensor) -> None:
        self.vertices = as_points("vertices", vertices)
        self.faces = as_faces("faces", faces, self.vertices.shape[0])
        tri = self.vertices[self.faces]
        self._a, self._b, self._c = tri[:, 0], tri[:, 1], tri[:, 2]
        self._centroid = tri.mean(axis=1)
        self._radius = np.linalg.norm(tri - self._centroid[:, None], axis=-1).max(axis=1)
        self._radius_max = float(self._radius.max())
        self._tree = cKDTree(self._centroid)

    @property
    def n_faces(self) -> int:
        return int(self.faces.shape[0])

    def query(self, points: FloatArray | Tensor, chunk: int = 2048) -> tuple[FloatArray, FloatArray, IntArray]:
        """Closest surface points.

        Args:
            points: (P, 3) query points in mm.
            chunk: points processed at once (memory bound).

        Returns:
            distances (P,) in mm, closest points (P, 3), and the index (P,) of the triangle they lie on.
        """
        pts = as_points("points", points)
        dist = np.empty(pts.shape[0])
        closest = np.empty_like(pts)
        face = np.empty(pts.shape[0], dtype=np.int64)
        for start in range(0, pts.shape[0], chunk):
            sl = slice(start, start + chunk)
            dist[sl], closest[sl], face[sl] = self._query_exact(pts[sl])
        return dist, closest, face

    def _query_exact(self, pts: FloatArray) -> tuple[FloatArray, FloatArray, IntArray]:
        n = pts.shape[0]
        k = min(4, self.n_faces)
        _, near = self._tree.query(pts, k=k)
        near = np.asarray(near).reshape(n, k)
        cp = closest_points_on_triangles(pts[:, None, :], self._a[near], self._b[near], self._c[near])
        upper = np.linalg.norm(cp - pts[:, None, :], axis=-1).min(axis=1)
        balls = self._tree.query_ball_point(pts, r=upper + self._radius_max + 1e-9)
        owner = np.repeat(np.arange(n), [len(b) for b in balls])
        cand = np.fromiter((f for b in balls for f in b), dtype=np.int64, count=owner.size)
        # Per-triangle bound: |p - centroid_f| - radius_f must not exceed the upper bound.
        gap = np.linalg.norm(pts[owner] - self._centroid[cand], axis=1) - self._radius[cand]
        keep = gap <= upper[owner] + 1e-9
        owner, cand = owner[keep], cand[keep]
        cpts = closest_points_on_triangles(pts[owner], self._a[cand], self._b[cand], self._c[cand])
        d = np.linalg.norm(cpts - pts[owner], axis=1)
        order = np.lexsort((d, owner))
        owner_sorted = owner[order]
        first = order[np.flatnonzero(np.r_[True, owner_sorted[1:] != owner_sorted[:-1]])]
        if first.size != n:  # cannot happen: the triangle giving ``upper`` always passes both tests
            raise RuntimeError("SurfaceQuery lost a query point; please report this")
        return d[first], cpts[first], cand[first]


def crop_points(points: FloatArray, center: FloatArray, radius: float) -> NDArray[np.bool_]:
    """(N,) mask of the points within ``radius`` mm of ``center`` (3,)."""
    return np.linalg.norm(points - np.asarray(center, dtype=np.float64), axis=1) <= radius


def crop_mesh(
    vertices: FloatArray, faces: IntArray | None, center: FloatArray, radius: float
) -> tuple[FloatArray, IntArray | None]:
    """Keeps the vertices within ``radius`` mm of ``center`` and the triangles whose three vertices are kept.

    Args:
        vertices: (V, 3) in mm.
        faces: (F, 3) or None (point cloud).
        center: (3,) in mm.
        radius: in mm.

    Returns:
        The cropped vertices (V', 3) and re-indexed faces (F', 3) (None for a point cloud).
    """
    keep = crop_points(vertices, center, radius)
    if not keep.any():
        raise ValueError(f"no vertex lies within {radius} mm of {np.asarray(center).tolist()}")
    if faces is None:
        return vertices[keep], None
    remap = np.full(vertices.shape[0], -1, dtype=np.int64)
    remap[keep] = np.arange(int(keep.sum()))
    new_faces = remap[faces]
    new_faces = new_faces[(new_faces >= 0).all(axis=1)]
    return vertices[keep], new_faces


def _rotation_from_vector(omega: FloatArray) -> FloatArray:
    """Rodrigues: rotation matrix of the axis-angle vector ``omega`` (3,) in radians."""
    angle = float(np.linalg.norm(omega))
    if angle < 1e-15:
        return np.eye(3)
    k = omega / angle
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(angle) * kx + (1.0 - np.cos(angle)) * (kx @ kx)


def icp_to_surface(
    points: FloatArray,
    surface: SurfaceQuery,
    init: SimilarityTransform,
    with_scale: bool = False,
    iterations: int = 50,
    tolerance_mm: float = 1e-3,
) -> SimilarityTransform:
    """Point-to-plane ICP (Chen & Medioni 1992) moving a mesh (``surface``) onto fixed ``points``.

    The unknown is the inverse map ``G`` (points -> mesh frame). Each iteration finds, for every point ``s_i``
    mapped by the current ``G``, its closest point ``c_i`` on the mesh and that triangle's unit normal ``n_i``,
    and solves the linearised least squares ``min sum ((G' s_i - c_i) . n_i)^2`` over a small rotation, a
    translation (and a scale) update, which converges in a few iterations where point-to-point ICP crawls
    along the surface.

    Args:
        points: (P, 3) fixed points (the cropped scan), mm.
        surface: the moving mesh in its own frame.
        init: initial mesh -> points transform (from landmarks).
        with_scale: fit an isotropic scale too (similarity ICP).
        iterations: maximum number of iterations.
        tolerance_mm: stop when no point moves more than this in an iteration.

    Returns:
        The refined mesh -> points transform.
    """
    pts = as_points("points", points)
    tri = surface.vertices[surface.faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-300)
    inv = init.inverse()
    for _ in range(iterations):
        y = inv.apply(pts)
        _, closest, face = surface.query(y)
        n = normals[face]
        residual = ((y - closest) * n).sum(axis=1)
        columns = [np.cross(y, n), n] + ([(y * n).sum(axis=1, keepdims=True)] if with_scale else [])
        jac = np.concatenate(columns, axis=1)
        delta = np.linalg.lstsq(jac, -residual, rcond=None)[0]
        rot = _rotation_from_vector(delta[:3])
        scale = 1.0 + float(delta[6]) if with_scale else 1.0
        step = SimilarityTransform(rot, delta[3:6], scale)
        inv = step.compose(inv)
        if np.abs(step.apply(y) - y).max() < tolerance_mm:
            break
    return inv.inverse()
